"""The public Python API's helpers (re-exported by ``deeppneumonia/__init__.py``; see docs/api.md).

Thin functions over the library: load a checkpoint, predict files / arrays / DICOM, Grad-CAM heatmaps as
arrays, read an image, load a data source, split it by patient, evaluate a checkpoint, train from a config.
Every image goes through the checkpoint's own preprocessing (``Predictor.pre``), exactly as in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

    from deeppneumonia.config import Config
    from deeppneumonia.data.manifest import Manifest
    from deeppneumonia.data.readers.types import DecodedImage
    from deeppneumonia.data.splits import Split
    from deeppneumonia.evaluation.runner import EvalResult
    from deeppneumonia.inference.predictor import Predictor

ImageLike = Union[str, Path, np.ndarray]  # noqa: UP007  (a runtime alias: PEP 604 on str would fail)
"""A file path (PNG, JPEG, DICOM) or an (H, W) / (H, W, 3) array: uint8 0..255 or float in [0, 1]."""


def load_predictor(checkpoint: str | Path, device: str = "auto", precision: str = "fp32") -> Predictor:
    """Load a trained classifier (``model.safetensors``) for inference.

    Args:
        checkpoint: the ``train/model.safetensors`` of a run (classes, preprocessing, thresholds inside).
        device: ``auto`` (a GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``fp32`` (default), ``bf16`` or ``auto`` (bf16 where the hardware has it): the faster path
            on CPUs with native bf16, probabilities within about 1e-2 of fp32 (docs/serving.md).

    Returns:
        A :class:`~deeppneumonia.inference.predictor.Predictor`: ``.classes``, ``.size``, ``.thresholds``,
        ``.model`` (a plain torchvision ResNet on one grey channel), ``.probabilities(x)``.

    Raises:
        CheckpointError: the file is not a classifier checkpoint.
    """
    from deeppneumonia.inference.predictor import Predictor

    return Predictor.from_checkpoint(checkpoint, device, precision)


def _as_predictor(model: Predictor | str | Path) -> Predictor:
    """``model`` itself, or the predictor loaded from a checkpoint path."""
    return model if not isinstance(model, str | Path) else load_predictor(model)


def to_pixels(image: ImageLike) -> np.ndarray:
    """One image as (H, W) float32 grey pixels in [0, 1] (files are decoded with :func:`read_image`).

    Args:
        image: a path, or an (H, W) or (H, W, 3) array (uint8 0..255, or float in [0, 1]; colour is averaged).

    Returns:
        (H, W) float32 in [0, 1].

    Raises:
        ImageReadError: a file cannot be decoded. ValueError: an array of another shape.
    """
    if isinstance(image, str | Path):
        return read_image(image).pixels
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3].mean(-1) if arr.dtype != np.uint8 else arr[..., :3].astype(np.float32).mean(-1) / 255.0
    elif arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        arr = arr.astype(np.float32) / 65535.0
    if arr.ndim != 2:
        raise ValueError(f"expected an (H, W) or (H, W, 3) image, got shape {arr.shape}")
    return np.clip(arr.astype(np.float32), 0.0, 1.0)


def _inputs(pred: Predictor, images: ImageLike | Sequence[ImageLike]) -> Tensor:
    """One preprocessed batch (B, 1, S, S) from one image or a sequence of images (paths or arrays)."""
    import torch

    one = isinstance(images, str | Path) or (isinstance(images, np.ndarray) and images.ndim in (2, 3)
                                             and not (images.ndim == 3 and images.shape[-1] not in (3, 4)))
    items = [images] if one else list(images)  # type: ignore[arg-type]
    return torch.cat([pred.preprocess(to_pixels(im)) for im in items])  # type: ignore[arg-type]


def predict(model: Predictor | str | Path, images: ImageLike | Sequence[ImageLike]) -> np.ndarray:
    """Class probabilities for images: files (PNG, JPEG, DICOM) or arrays, one or several.

    Args:
        model: a :class:`Predictor` or the path of a ``model.safetensors``.
        images: one image or a sequence (see :data:`ImageLike`); a (N, H, W) array is N images.

    Returns:
        (N, C) float32 probabilities in the order of ``model.classes`` (softmax; sigmoid for multi-label).
        ``model.labels(probs)`` applies the stored thresholds.

    Raises:
        ImageReadError: a file cannot be decoded (DICOM needs the ``dicom`` extra: MissingExtraError then).
    """
    pred = _as_predictor(model)
    return pred.probabilities(_inputs(pred, images))


def explain(model: Predictor | str | Path, images: ImageLike | Sequence[ImageLike], class_index: int | None = None,
            layer: str = "layer4") -> np.ndarray:
    """Grad-CAM heatmaps as arrays, at the network's input size (needs the ``explain`` extra).

    Args:
        model: a :class:`Predictor` or the path of a ``model.safetensors``.
        images: one image or a sequence (paths or arrays, as :func:`predict`).
        class_index: the class to explain for every image; default: each image's most probable class.
        layer: the layer whose activations are weighted (``layer4``, or e.g. ``layer3``).

    Returns:
        (N, S, S) float32 heatmaps in [0, 1], S = ``model.size`` (the image as the network saw it:
        resized with the checkpoint's ``resize``; use ``model.geometry(w, h)`` to map back to the original).

    Raises:
        MissingExtraError: pytorch-grad-cam is not installed (``pip install 'deeppneumonia[explain]'``).
    """
    from deeppneumonia.extras import require

    require("pytorch_grad_cam")
    from deeppneumonia.inference.explain import gradcam

    pred = _as_predictor(model)
    x = _inputs(pred, images)
    cls: int | list[int] = class_index if class_index is not None else [int(i) for i in pred.probabilities(x).argmax(1)]
    return gradcam(pred.model, x, cls, layer)


def read_image(path: str | Path) -> DecodedImage:
    """Decode a PNG (8/16-bit), JPEG or DICOM file (VOI LUT, MONOCHROME1 inverted) into grey pixels.

    Args:
        path: the image file (its format is judged from its bytes, never its name).

    Returns:
        A ``DecodedImage``: ``.pixels`` (H, W) float32 in [0, 1], plus ``.info`` (format, size, bit depth...).

    Raises:
        ImageReadError: missing, corrupt, truncated, not an image, too large; DICOM without pydicom.
    """
    from deeppneumonia.data.imageio import read_image as _read

    return _read(path)


def load_source(path: str | Path, kind: str = "auto", *, strict: bool = False, classes: Sequence[str] | None = None,
                patient_regex: str | None = None) -> Manifest:
    """Read a data set (folder layout or CSV, or ``sample:kermany`` / ``sample:nih``) into a manifest.

    Args:
        path: a folder in a known layout, a generic CSV, or ``sample:NAME`` (a data set shipped in the package).
        kind: ``auto`` (detect), ``siim``, ``folder``, ``covid_cxr``, ``nih``, ``nih_binary`` or ``csv``.
        strict: stop at the first bad file or row instead of reporting it and skipping it.
        classes: class order for a generic CSV.
        patient_regex: class-per-folder: a regex whose first group is the patient id.

    Returns:
        A :class:`~deeppneumonia.data.manifest.Manifest`: ``.records`` (path, patient, study, target (C,) with
        NaN = unknown, boxes), ``.classes``, ``.task``, ``.problems`` (every skipped file and row).
    """
    from deeppneumonia.data.sources import load_source as _load
    from deeppneumonia.data.sources import resolve_data_path

    return _load(resolve_data_path(str(path)), kind, strict=strict, classes=classes, patient_regex=patient_regex)


def split_patients(manifest: Manifest, val: float = 0.15, test: float = 0.15, seed: int = 0) -> Split:
    """Split a manifest into train / val / test parts by patient (no patient is in two parts).

    Args:
        manifest: from :func:`load_source`.
        val: the share of patients for validation.
        test: the share of patients held out for testing (0 = none).
        seed: the split's seed (stratified by class where it can be).

    Returns:
        A :class:`~deeppneumonia.data.splits.Split`: ``.train``, ``.val``, ``.test`` arrays of record indices.
    """
    from deeppneumonia.data.splits import patient_split

    return patient_split(manifest, val, test, seed)


def evaluate(checkpoint: str | Path, data: str | Path, out_dir: str | Path, **kwargs: Any) -> EvalResult:
    """Metrics with patient-bootstrap CIs, ``predictions.csv`` and an HTML report of a checkpoint on a data set.

    Same as :func:`deeppneumonia.evaluation.runner.evaluate_checkpoint` (see it for ``split``, ``n_boot``, ...),
    except that ``data`` may be ``sample:NAME``.

    Args:
        checkpoint: a ``model.safetensors``.
        data: a data folder, a CSV, or ``sample:NAME``.
        out_dir: the output folder (``metrics.json``, ``predictions.csv``, ``report.html``).
        **kwargs: ``source``, ``split``, ``cache_dir``, ``n_boot``, ``device``, ``progress``, ... of ``evaluate_checkpoint``.

    Returns:
        An ``EvalResult``: ``.out_dir`` (``report.html`` inside) and ``.metrics`` (``metrics["image"]["auroc_macro"]``...).
    """
    from deeppneumonia.data.sources import resolve_data_path
    from deeppneumonia.evaluation.runner import evaluate_checkpoint

    return evaluate_checkpoint(checkpoint, resolve_data_path(str(data)), out_dir, **kwargs)


@dataclass
class TrainResult:
    """What :func:`train` produced: the run folder, the trained model's path and its held-out test metrics."""

    run_dir: Path
    checkpoint: Path
    test_metrics: dict[str, Any]


def train(config: Config | str, overrides: Sequence[str] = ()) -> TrainResult:
    """Run the whole job of a config: data, patient split, cache, Stage I (if ``train.pretrained``), Stage II.

    Args:
        config: a :class:`~deeppneumonia.config.Config` (e.g. ``load_config("quick", [...])``) or a preset name / YAML path.
        overrides: dotted overrides when ``config`` is a name, e.g. ``["train.optim.epochs=3"]``.

    Returns:
        A :class:`TrainResult`; the checkpoint is ``run_dir / "train" / "model.safetensors"`` and
        ``test_metrics`` the best model's metrics on the held-out patients (also in ``test_metrics.json``).
        A killed run resumes when called again with the same config.
    """
    from deeppneumonia.config import load_config
    from deeppneumonia.training.pipeline import prepare_data, run_pretrain, run_train

    cfg = load_config(config, list(overrides)) if isinstance(config, str) else config
    data = prepare_data(cfg, cfg.run.progress)
    if cfg.train.pretrained and not cfg.train.encoder:
        run_pretrain(cfg, data)
    metrics = run_train(cfg, data)
    run_dir = Path(cfg.run.out_dir).expanduser()
    return TrainResult(run_dir, run_dir / "train" / "model.safetensors", metrics)


__all__ = ["ImageLike", "TrainResult", "evaluate", "explain", "load_predictor", "load_source", "predict", "read_image",
           "split_patients", "to_pixels", "train"]
