"""Batched `predict`: answers equal batch-1 answers, one row per input file whatever it is, unique overlay names,
exit status and --out checked before any work; the exact layer4 CAM equals pytorch-grad-cam's Grad-CAM; ONNX
(fp32 and int8) behind the same interface."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from deeppneumonia.cli import main
from deeppneumonia.errors import ConfigError
from deeppneumonia.inference.files import predict_paths
from deeppneumonia.inference.predictor import Predictor
from tests.serve.helpers import chest_like, jpeg_bytes, png_bytes, random_checkpoint

CLASSES = ("normal", "pneumonia", "other")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("batched") / "model.safetensors", CLASSES, size=64)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Good images of several sizes in two sub-folders with clashing stems, plus every kind of bad entry."""
    from tests.data.readers.test_dicom import _dicom_dataset, _ramp12
    from tests.serve.test_app import dicom_bytes

    root = tmp_path_factory.mktemp("in")
    for sub in ("a", "b"):
        (root / sub).mkdir()
    for i in range(7):
        (root / "a" / f"img{i}.png").write_bytes(png_bytes(chest_like(60 + 9 * i, 70, seed=i)))
    (root / "b" / "img0.png").write_bytes(png_bytes(chest_like(90, 50, seed=42)))  # same stem as a/img0.png
    (root / "b" / "x.jpeg").write_bytes(jpeg_bytes(chest_like(80, 80, seed=7)))
    (root / "b" / "scan").write_bytes(dicom_bytes(_dicom_dataset(_ramp12(40, 48))))  # extensionless DICOM
    (root / "b" / "notes.txt").write_text("not an image")
    (root / "b" / "broken.png").write_bytes(png_bytes(chest_like(64, 64))[:60])
    (root / "b" / "dangling.png").symlink_to(root / "nowhere.png")
    os.mkfifo(root / "b" / "pipe.png")
    return root


def test_batched_rows_equal_batch_one_rows(ckpt: Path, folder: Path, tmp_path: Path) -> None:
    one = predict_paths(ckpt, [folder], heatmaps=tmp_path / "h1", device="cpu", progress=False, batch_size=1)
    many = predict_paths(ckpt, [folder], heatmaps=tmp_path / "h5", device="cpu", progress=False, batch_size=5)
    assert [r["path"] for r in one] == [r["path"] for r in many]
    for a, b in zip(one, many, strict=True):
        assert a["error"] == b["error"] and a.get("prediction") == b.get("prediction")
        for k in a:
            if k.startswith("p_"):
                assert a[k] == pytest.approx(b[k], abs=2e-5)
        if a.get("heatmap"):
            pa = np.asarray(__import__("PIL.Image").Image.open(a["heatmap"]), np.int16)
            pb = np.asarray(__import__("PIL.Image").Image.open(b["heatmap"]), np.int16)
            assert np.abs(pa - pb).max() <= 2


def test_one_row_per_file_and_unique_overlays(ckpt: Path, folder: Path, tmp_path: Path) -> None:
    rows = predict_paths(ckpt, [folder], heatmaps=tmp_path / "heat", device="cpu", progress=False, batch_size=4)
    by = {os.path.relpath(r["path"], folder): r for r in rows}
    assert len(rows) == 14 and len(by) == 14  # 7 in a; img0, x, scan, notes, broken, dangling, pipe in b
    for bad in ("b/notes.txt", "b/broken.png", "b/dangling.png", "b/pipe.png"):
        assert by[bad]["error"] and "p_normal" not in by[bad], bad
    assert "not found" in by["b/dangling.png"]["error"] and "not a regular file" in by["b/pipe.png"]["error"]
    assert not by["b/scan"]["error"] and by["b/scan"]["prediction"] in CLASSES  # extensionless DICOM predicted
    heat = [r["heatmap"] for r in rows if not r["error"]]
    assert len(heat) == len(set(heat)) == 10 and all(Path(h).is_file() for h in heat)
    assert {Path(by["a/img0.png"]["heatmap"]).name, Path(by["b/img0.png"]["heatmap"]).name} == {
        "a__img0_gradcam.png", "b__img0_gradcam.png"}


def test_cli_exit_status_and_out_checked_first(ckpt: Path, folder: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "new" / "deeper" / "pred.csv"  # a missing folder is created
    assert main(["-q", "predict", "--checkpoint", str(ckpt), str(folder / "a"), "--out", str(out)]) == 0
    with out.open() as fh:
        assert len(list(csv.DictReader(fh))) == 7
    bad = [str(folder / "b" / n) for n in ("notes.txt", "broken.png", "pipe.png")]
    assert main(["-q", "predict", "--checkpoint", str(ckpt), *bad, "--out", str(tmp_path / "all_bad.csv")]) == 2
    (tmp_path / "afile").write_text("x")
    capsys.readouterr()
    assert main(["-q", "predict", "--checkpoint", str(tmp_path / "missing.safetensors"), str(folder),
                 "--out", str(tmp_path / "afile" / "pred.csv")]) == 2  # refused before the model is even loaded
    err = capsys.readouterr().err
    assert "--out" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_layer4_cam_equals_pytorch_grad_cam() -> None:
    pytest.importorskip("pytorch_grad_cam")
    from deeppneumonia.inference.explain import METHODS, fast_cam_applies, gradcam, library_cam
    from deeppneumonia.models.factory import build_classifier

    torch.manual_seed(0)
    model = build_classifier(3).eval()
    x = torch.randn(3, 1, 96, 96)
    assert fast_cam_applies(model, "layer4", "gradcam") and not fast_cam_applies(model, "layer3", "gradcam")
    for method in ("gradcam", "hirescam"):
        fast = gradcam(model, x, [0, 1, 2], "layer4", method)
        ref = library_cam(model, x, [0, 1, 2], "layer4", method)
        assert fast.shape == ref.shape == (3, 96, 96) and np.abs(fast - ref).max() < 1e-4
    for method in METHODS:  # every method runs and gives maps in [0, 1]
        m = gradcam(model, x[:1], 1, "layer3", method)
        assert m.shape == (1, 96, 96) and m.min() >= 0 and m.max() <= 1 + 1e-6
    assert not model.layer4._forward_hooks and not model.layer4._backward_hooks


def test_predictor_predict_gives_cam_from_the_same_forward(ckpt: Path) -> None:
    from deeppneumonia.inference.explain import library_cam

    pred = Predictor.from_checkpoint(ckpt, "cpu")
    x = torch.randn(4, 1, 64, 64)
    probs, heat, idx = pred.predict(x, heatmaps=True)
    assert np.allclose(probs, pred.probabilities(x), atol=1e-6) and heat is not None
    assert np.abs(heat - library_cam(pred.model, x, idx.tolist())).max() < 1e-4


def test_onnx_predictor_and_int8_export(ckpt: Path, folder: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    from deeppneumonia.inference.export import export_int8
    from deeppneumonia.inference.onnx import OnnxPredictor

    labelled = tmp_path / "labelled"
    for i, c in enumerate(CLASSES):
        (labelled / c).mkdir(parents=True)
        for k in range(3):
            (labelled / c / f"{k}.png").write_bytes(png_bytes(chest_like(64, 64, seed=10 * i + k)))
    onnx = tmp_path / "m.onnx"
    report = export_int8(ckpt, onnx, folder / "a", labelled, with_features=True, n_calibration=8)
    assert report["images"] == 9 and 0 <= report["max_abs_prob_diff"] < 0.5 and "auroc_int8" in report
    assert json.loads((tmp_path / "m.int8.json").read_text())["onnx"]["precision"] == "int8"
    assert (tmp_path / "m.int8.parity.json").is_file()
    ref = predict_paths(ckpt, [folder / "a"], heatmaps=tmp_path / "h_pt", device="cpu", progress=False)
    got = predict_paths(onnx, [folder / "a"], heatmaps=tmp_path / "h_onnx", progress=False, batch_size=3)
    for a, b in zip(ref, got, strict=True):
        assert a["prediction"] == b["prediction"] and a["p_normal"] == pytest.approx(b["p_normal"], abs=1e-4)
    p8 = OnnxPredictor.from_file(tmp_path / "m.int8.onnx")
    assert p8.classes == list(CLASSES) and p8.model_info["format"] == "onnx" and p8.supports_heatmaps()


def test_bf16_predictor_is_close_to_fp32_and_onnx_refuses_it(ckpt: Path, tmp_path: Path) -> None:
    fp32 = Predictor.from_checkpoint(ckpt, "cpu")
    bf16 = Predictor.from_checkpoint(ckpt, "cpu", precision="bf16")
    assert fp32.rt.dtype is None and bf16.rt.dtype == torch.bfloat16 and fp32.rt.channels_last
    x = fp32.preprocess(chest_like(80, 90, seed=3)).repeat(4, 1, 1, 1) + 0.1 * torch.randn(4, 1, 64, 64)
    p32, heat32, _ = fp32.predict(x, heatmaps=True)
    p16, heat16, _ = bf16.predict(x, heatmaps=True)
    assert p16.dtype == np.float32 and np.abs(p16 - p32).max() < 0.05
    assert heat16 is not None and heat32 is not None and np.isfinite(heat16).all()
    assert np.abs(heat16 - heat32).max() < 0.1 and heat16.max() == pytest.approx(1.0)
    assert fp32.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert fp32.model_info["precision"] == "fp32" and bf16.model_info["precision"] == "bf16"
    # channels-last changes nothing but rounding: the same network in the contiguous layout agrees
    ref = torch.softmax(fp32.model.to(memory_format=torch.contiguous_format)(x), 1).detach().numpy()
    np.testing.assert_allclose(p32, ref, atol=1e-5)
    with pytest.raises(ConfigError, match="applies to PyTorch only"):
        predict_paths(ckpt, [tmp_path], runtime="onnxruntime", precision="bf16")
    assert predict_paths(ckpt, [tmp_path], runtime="onnxruntime", precision="auto", progress=False) == []
    with pytest.raises(ConfigError, match="choose fp32, bf16 or auto"):
        Predictor.from_checkpoint(ckpt, "cpu", precision="fp8")
