from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from deeppneumonia.cli import main
from deeppneumonia.errors import DataError
from deeppneumonia.evaluation.runner import evaluate_checkpoint, select_split
from deeppneumonia.training.pipeline import PreparedData
from tests.inference.test_explain import trained_lesion_run  # noqa: F401  (session fixture)


def test_evaluate_on_held_out_patients(trained_lesion_run: tuple[Path, PreparedData], tmp_path: Path) -> None:  # noqa: F811
    run, data = trained_lesion_run
    csv_path = Path(data.manifest.root) / "labels.csv"
    res = evaluate_checkpoint(run / "train" / "model.safetensors", csv_path, tmp_path / "ev",
                              cache_dir=tmp_path / "cache", n_boot=200, device="cpu", progress=False)
    m = res.metrics
    test_ids = set(json.loads((run / "split.json").read_text())["test"])
    assert m["split"] == "test" and m["images"] == len(test_ids)  # only images the model never trained on
    for level in ("image", "study"):
        for key in ("accuracy", "macro_f1", "auroc_macro"):
            lo, hi = m[level]["ci"][key]
            assert lo <= m[level][key] <= hi
    assert "overall" in m["localization_gradcam"]
    with (tmp_path / "ev" / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["image_id"] for r in rows} == test_ids
    assert set(rows[0]) >= {"patient_id", "study_id", "p_clear", "p_lesion", "label", "prediction"}
    html = (tmp_path / "ev" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5
    assert "Gallery" in html and "Summary" in html
    assert list((tmp_path / "ev").glob("gallery_*.png"))


def test_split_selection_rules(trained_lesion_run: tuple[Path, PreparedData]) -> None:  # noqa: F811
    run, data = trained_lesion_run
    ids = [r.image_id for r in data.manifest.records]
    idx, part = select_split(run / "train" / "model.safetensors", ids, "auto")
    assert part == "test" and 0 < len(idx) < len(ids)
    assert select_split(run / "train" / "model.safetensors", ["other"], "auto")[1] == "all"
    with pytest.raises(DataError):
        select_split(Path("/nowhere/x/model.safetensors"), ids, "test")


def test_cli_evaluate_and_explain(trained_lesion_run: tuple[Path, PreparedData], tmp_path: Path,  # noqa: F811
                                  capsys: pytest.CaptureFixture[str]) -> None:
    run, data = trained_lesion_run
    ckpt = str(run / "train" / "model.safetensors")
    csv_path = str(Path(data.manifest.root) / "labels.csv")
    assert main(["-q", "evaluate", "--checkpoint", ckpt, "--data", csv_path, "--out", str(tmp_path / "e"),
                 "--n-boot", "50", "--cache-dir", str(tmp_path / "c"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "image: accuracy" in out and "report:" in out
    img = str(data.manifest.records[1].path)
    assert main(["-q", "explain", "--checkpoint", ckpt, img, "--out", str(tmp_path / "x"), "--device", "cpu"]) == 0
    assert list((tmp_path / "x").glob("*_gradcam.png"))


def test_mgacr_heads_kept_for_analysis_are_scored(tmp_path: Path) -> None:
    from deeppneumonia.training.pipeline import run_train
    from tests.conftest import make_lesion_csv
    from tests.training.test_pipeline import tiny_config

    csv_path = make_lesion_csv(tmp_path / "d", n=32, size=64)
    cfg = tiny_config(tmp_path, csv_path, "data.size=64", "train.pretrained=false", "train.optim.epochs=1",
                      "train.keep_attention_heads=true")
    run_train(cfg)
    ckpt = tmp_path / "run" / "train" / "model.safetensors"
    assert (ckpt.parent / "mgacr_heads.safetensors").is_file()
    res = evaluate_checkpoint(ckpt, csv_path, tmp_path / "ev", cache_dir=tmp_path / "cache", n_boot=20,
                              device="cpu", progress=False)
    loc = res.metrics["localization_mgacr"]
    assert set(loc) == {"layer1", "layer2", "layer3", "layer4"}
    assert 0 <= loc["layer1"]["overall"]["energy"] <= 1
    assert "MGACR map+ of layer1" in (tmp_path / "ev" / "report.html").read_text()

    # `explain --mgacr-layer N`: map+ overlays from the kept heads; a bad file gets its row, the others go on
    from PIL import Image

    from deeppneumonia.cli import main
    from deeppneumonia.evaluation.attention_maps import explain_map_plus

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    src = sorted(p for p in csv_path.parent.rglob("*.png"))[:2]
    for i, f in enumerate(src):
        (imgs / f"{i}.png").write_bytes(f.read_bytes())
    (imgs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    rows = explain_map_plus(ckpt, [imgs], 3, tmp_path / "maps", "cpu")
    assert [bool(r["error"]) for r in rows] == [False, False, True]
    with Image.open(rows[0]["heatmap"]) as im:
        assert im.mode == "RGB" and rows[0]["heatmap"].endswith("_mapplus_layer3.png")
    assert main(["-q", "explain", "--checkpoint", str(ckpt), str(src[0]), "--out", str(tmp_path / "m2"),
                 "--mgacr-layer", "2", "--device", "cpu"]) == 0
    assert len(list((tmp_path / "m2").glob("*_mapplus_layer2.png"))) == 1
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "model.safetensors").write_bytes(ckpt.read_bytes())  # the same weights without heads beside them
    assert main(["-q", "explain", "--checkpoint", str(plain / "model.safetensors"), str(src[0]), "--out",
                 str(tmp_path / "m3"), "--mgacr-layer", "2", "--device", "cpu"]) == 2
