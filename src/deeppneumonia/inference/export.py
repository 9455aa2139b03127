"""Export the inference network (a plain classifier: no MGACR, no projector) to ONNX, with a parity check,
and optionally an int8 copy (ONNX Runtime static quantization) with a parity report against fp32.

The exported graph takes the *normalised* (B, 1, S, S) input the predictor builds and returns logits, and,
with ``with_features``, also the activations of the CAM layer so that a runtime without PyTorch can draw
class activation maps (CAM = ReLU(sum_k w_ck * A_k) with the fc weights, which are then written into the
JSON too). The checkpoint's metadata (classes, preprocessing, thresholds) is written beside the model as JSON.

int8 (:func:`quantize_int8`): ONNX Runtime's static quantization in the QDQ format, weights int8 per output
channel, activations uint8 calibrated (min-max) on real images: a data set's cache folder (``images.npy``)
or a folder of images. :func:`int8_parity` reports the largest probability difference, the agreement of the
decided class and, on a labelled folder (one sub-folder per class), the AUROC of both models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from deeppneumonia.errors import CheckpointError, ConfigError, ImageReadError
from deeppneumonia.inference.onnx import OnnxPredictor
from deeppneumonia.inference.predictor import Predictor, file_sha256
from deeppneumonia.models.resnet import XRayResNet
from deeppneumonia.transforms.preprocessing import Preprocessing


class _WithFeatures(nn.Module):
    def __init__(self, model: XRayResNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(logits, CAM feature map): layer4, or the aggregated map of an MSA network."""
        from deeppneumonia.models.cam import cam_features

        last = cam_features(self.model, x)  # layer4, or the aggregated map of an MSA network (IAM)
        return self.model.forward_head(last), last  # type: ignore[arg-type]


def export_onnx(checkpoint: str | Path, out: str | Path, with_features: bool = False, opset: int = 18,
                atol: float = 1e-4) -> dict[str, Any]:
    """Write ``out`` (.onnx) and ``out``.json; return the parity report against PyTorch (raises if it fails)."""
    pred = Predictor.from_checkpoint(checkpoint, device="cpu")
    if with_features and not isinstance(pred.model.fc, nn.Linear):
        raise CheckpointError(f"{checkpoint}: --with-features exports the CAM layer of a plain classifier (fc weights); "
                              f"a {pred.meta['arch']} network has no such head. Export without it.")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model: nn.Module = _WithFeatures(pred.model) if with_features else pred.model
    model.eval()
    s = pred.size
    example = torch.randn(2, 1, s, s)
    names = ["logits", "features"] if with_features else ["logits"]
    torch.onnx.export(model, (example,), str(out), input_names=["image"], output_names=names, opset_version=opset,
                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},), dynamo=True,
                      external_data=False, verbose=False)
    meta = {k: v for k, v in pred.meta.items() if k != "config"}
    meta["onnx"] = {"input": "image (B, 1, S, S), normalised: (x / 255 - mean) / std", "outputs": names,
                    "precision": "fp32", "source_sha256": pred.sha256}
    if with_features:
        meta["cam"] = {"layer": "layer4", "fc_weight": pred.model.fc.weight.detach().cpu().tolist()}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    report = parity(out, model, s, atol)
    if not report["ok"]:
        raise RuntimeError(f"ONNX output differs from PyTorch by {report['max_abs_diff']:.2e} > {atol}")
    return report


def parity(onnx_path: Path, model: nn.Module, size: int, atol: float = 1e-4, n: int = 4) -> dict[str, Any]:
    """Compare the ONNX model with ``model`` on ``n`` seeded random inputs (onnxruntime, CPU).

    Returns ``{"max_abs_diff", "ok", "atol", "batch"}``; the difference of each output is taken relative to its
    scale (divided by 1 + the largest reference magnitude).
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x)
    ref_t = ref if isinstance(ref, tuple) else (ref,)
    got = session.run(None, {"image": x.numpy()})
    # relative to each output's scale (1 + its largest magnitude): logits are O(1) to O(1000) for an overconfident
    # model, last-stage activations O(10) to O(1000); float32 reassociation errors grow with that scale
    diff = max(float(np.abs(g - r.numpy()).max() / (1.0 + np.abs(r.numpy()).max()))
               for g, r in zip(got, ref_t, strict=True))
    return {"max_abs_diff": diff, "ok": diff <= atol, "atol": atol, "batch": n}


# ------------------------------------------------------------------------------------------------------------
# int8
# ------------------------------------------------------------------------------------------------------------


def _image_files(folder: Path) -> list[Path]:
    """Regular files under ``folder`` with an image or DICOM extension, sorted."""
    from deeppneumonia.data.sources._common import IMAGE_SUFFIXES

    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def calibration_inputs(source: str | Path, pre: Preprocessing, n: int = 128, seed: int = 0) -> np.ndarray:
    """Up to ``n`` normalised (N, 1, S, S) inputs from a cache folder (``images.npy``) or a folder of images.

    Raises:
        ConfigError: no usable image (or a cache of another size).
    """
    source = Path(source)
    rng = np.random.default_rng(seed)
    if (source / "images.npy").is_file():
        images = np.load(source / "images.npy", mmap_mode="r")
        if images.shape[1:] != (pre.size, pre.size):
            raise ConfigError(f"{source}: cache images are {images.shape[1]} px, the model takes {pre.size} px")
        pick = np.sort(rng.choice(len(images), min(n, len(images)), replace=False))
        return pre.from_uint8(torch.from_numpy(np.asarray(images[pick]))[:, None]).numpy()
    from deeppneumonia.data.imageio import read_image

    files = _image_files(source)
    rng.shuffle(files)  # type: ignore[arg-type]
    xs: list[np.ndarray] = []
    for f in files:
        try:
            xs.append(pre.from_pixels(read_image(f).pixels).numpy())
        except ImageReadError:
            continue
        if len(xs) >= n:
            break
    if not xs:
        raise ConfigError(f"{source}: no readable image (or cache folder with images.npy) to calibrate int8 on")
    return np.concatenate(xs)


def quantize_int8(fp32: str | Path, out: str | Path, calibration: np.ndarray, batch: int = 8) -> Path:
    """Static QDQ quantization of ``fp32`` into ``out``: int8 weights per channel, uint8 activations (min-max)."""
    import tempfile

    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.it = iter(range(0, len(calibration), batch))

        def get_next(self) -> dict[str, np.ndarray] | None:
            """The next calibration batch as the ``image`` input, or None when done."""
            i = next(self.it, None)
            return None if i is None else {"image": np.ascontiguousarray(calibration[i:i + batch], np.float32)}

    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)  # folds BatchNorm, infers shapes
        quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
    meta = json.loads(Path(fp32).with_suffix(".json").read_text())
    meta["onnx"] = {**meta.get("onnx", {}), "precision": "int8", "quantization": {
        "format": "QDQ", "weights": "int8 per channel", "activations": "uint8, min-max calibration",
        "calibration_images": len(calibration)}}
    out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    return out


def _auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Binary AUROC (scikit-learn's); NaN without both classes."""
    from sklearn.metrics import roc_auc_score

    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc_score(positive, scores))


def labelled_folder(folder: str | Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    """Image files of a folder with one sub-folder per class (named as the model's classes) and their labels."""
    files: list[Path] = []
    labels: list[int] = []
    for i, c in enumerate(classes):
        sub = Path(folder) / c
        if sub.is_dir():
            found = _image_files(sub)
            files += found
            labels += [i] * len(found)
    if not files:
        raise ConfigError(f"{folder}: no sub-folder named after a class of the model ({', '.join(classes)})")
    return files, np.asarray(labels)


def int8_parity(fp32: str | Path, int8: str | Path, inputs: np.ndarray, labels: np.ndarray | None = None,
                batch: int = 16) -> dict[str, Any]:
    """fp32 against int8 on ``inputs``: max |prob diff|, agreement of the most probable class and of the decided
    class (with the stored thresholds), AUROC when labelled."""
    a, b = OnnxPredictor.from_file(fp32), OnnxPredictor.from_file(int8)
    pa = np.concatenate([a.probabilities(inputs[i:i + batch]) for i in range(0, len(inputs), batch)])
    pb = np.concatenate([b.probabilities(inputs[i:i + batch]) for i in range(0, len(inputs), batch)])
    da, db = a.explained_class(pa), b.explained_class(pb)
    report: dict[str, Any] = {"images": len(inputs), "max_abs_prob_diff": float(np.abs(pa - pb).max()),
                              "mean_abs_prob_diff": float(np.abs(pa - pb).mean()),
                              "class_agreement": float((pa.argmax(1) == pb.argmax(1)).mean()),
                              "decision_agreement": float((da == db).mean())}
    if labels is not None:
        cols = [1] if pa.shape[1] == 2 else list(range(pa.shape[1]))  # binary: the positive class; else macro OvR
        for name, p in (("fp32", pa), ("int8", pb)):
            report[f"auroc_{name}"] = float(np.nanmean([_auroc(p[:, c], labels == c) for c in cols]))
        report["auroc_diff"] = report["auroc_int8"] - report["auroc_fp32"]
    return report


def export_int8(checkpoint: str | Path, out: str | Path, calibration: str | Path, labelled: str | Path | None = None,
                with_features: bool = False, n_calibration: int = 128) -> dict[str, Any]:
    """fp32 export to ``out``, int8 copy to ``out`` with suffix ``.int8.onnx``, and the int8 parity report.

    Parity is measured on the labelled folder when given (with AUROC), else on the calibration images.
    """
    out = Path(out)
    fp32_report = export_onnx(checkpoint, out, with_features)
    pred = Predictor.from_checkpoint(checkpoint, device="cpu")
    calib = calibration_inputs(calibration, pred.pre, n_calibration)
    q = quantize_int8(out, out.with_suffix(".int8.onnx"), calib)
    labels = None
    inputs = calib
    if labelled is not None:
        from deeppneumonia.data.imageio import read_image

        files, lab = labelled_folder(labelled, pred.classes)
        xs, keep = [], []
        for f, y in zip(files, lab, strict=True):
            try:
                xs.append(pred.pre.from_pixels(read_image(f).pixels).numpy())
                keep.append(y)
            except ImageReadError:
                continue
        inputs, labels = np.concatenate(xs), np.asarray(keep)
    report = int8_parity(out, q, inputs, labels)
    report.update({"fp32": str(out), "int8": str(q), "fp32_vs_pytorch_max_abs_diff": fp32_report["max_abs_diff"],
                   "parity_on": str(labelled) if labelled is not None else f"{len(calib)} calibration images"})
    q.with_suffix(".parity.json").write_text(json.dumps(report, indent=1))
    return report


def exported_predictor(checkpoint: str | Path, spinning: bool = True) -> OnnxPredictor:
    """``checkpoint`` exported to a temporary ONNX file (removed at exit) and loaded with ONNX Runtime."""
    import atexit
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="deeppneumonia-onnx-"))
    atexit.register(shutil.rmtree, folder, True)
    try:
        export_onnx(checkpoint, folder / "model.onnx", with_features=True)
    except CheckpointError:  # a head without CAM features (IAM's MSA network): logits only
        export_onnx(checkpoint, folder / "model.onnx")
    pred = OnnxPredictor.from_file(folder / "model.onnx", spinning=spinning)
    pred.source, pred.sha256, pred.format = Path(checkpoint), file_sha256(checkpoint), "safetensors (onnxruntime)"
    return pred
