from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from deeppneumonia.cli import main
from deeppneumonia.inference.files import predict_paths
from deeppneumonia.inference.predictor import Predictor
from deeppneumonia.training.pipeline import PreparedData
from tests.inference.test_explain import trained_lesion_run  # noqa: F401  (session fixture)


def test_predict_folder_reports_bad_files(trained_lesion_run: tuple[Path, PreparedData], tmp_path: Path) -> None:  # noqa: F811
    run, data = trained_lesion_run
    folder = tmp_path / "in"
    folder.mkdir()
    lesion = next(r for r in data.manifest.records if r.boxes)
    clear = next(r for r in data.manifest.records if not r.boxes)
    (folder / "a.png").write_bytes(lesion.path.read_bytes())
    (folder / "b.png").write_bytes(clear.path.read_bytes())
    (folder / "broken.png").write_bytes(lesion.path.read_bytes()[:80])
    rows = predict_paths(run / "train" / "model.safetensors", [folder], heatmaps=tmp_path / "heat", device="cpu",
                         progress=False)
    by = {Path(r["path"]).name: r for r in rows}
    assert by["broken.png"]["error"] and "p_lesion" not in by["broken.png"]
    assert by["a.png"]["prediction"] == "lesion" and by["b.png"]["prediction"] == "clear"
    assert Path(by["a.png"]["heatmap"]).is_file()
    out = tmp_path / "pred.csv"
    assert main(["-q", "predict", "--checkpoint", str(run / "train" / "model.safetensors"), str(folder), "--out",
                 str(out), "--device", "cpu"]) == 0
    with out.open() as fh:
        assert len(list(csv.DictReader(fh))) == 3


def test_onnx_export_matches_pytorch(trained_lesion_run: tuple[Path, PreparedData], tmp_path: Path) -> None:  # noqa: F811
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    from deeppneumonia.inference.export import export_onnx

    run, data = trained_lesion_run
    ckpt = run / "train" / "model.safetensors"
    report = export_onnx(ckpt, tmp_path / "m.onnx", with_features=True)
    assert report["ok"] and report["max_abs_diff"] < 1e-4
    meta = json.loads((tmp_path / "m.json").read_text())
    assert meta["classes"] == ["clear", "lesion"] and meta["onnx"]["outputs"] == ["logits", "features"]
    # on a real image, ONNX Runtime and the predictor agree on the probabilities
    pred = Predictor.from_checkpoint(ckpt, "cpu")
    x = pred.preprocess_uint8(__import__("torch").from_numpy(np.asarray(data.cache.images[:3]))[:, None])
    logits, feats = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"image": x.numpy()})
    e = np.exp(logits - logits.max(1, keepdims=True))
    probs = e / e.sum(1, keepdims=True)
    assert np.allclose(probs, pred.probabilities(x), atol=1e-4) and feats.shape[1] == 512
