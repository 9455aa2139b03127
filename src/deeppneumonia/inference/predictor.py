"""One inference API: a predictor built from a saved classifier (used by evaluate, explain, predict, serve).

Preprocessing comes from the checkpoint's metadata and is the same as training's: resize to the working
size with the cache's resize (including the uint8 rounding), normalise with the stored mean/std.

Decisions (:meth:`Predictor.labels`) use the thresholds stored with the model, for both tasks:

* **multi-label**: every class whose probability is at or above its threshold (0.5 when there are none);
* **multi-class**: the one class with the largest ``p_c / t_c`` (plain argmax when there are no thresholds).
  For two classes with Youden thresholds ``t`` and ``1 - t`` this is exactly "positive when ``p >= t``".
  :meth:`Predictor.above_threshold` lists every class with ``p_c >= t_c`` (the one-vs-rest reading).

:func:`deeppneumonia.inference.files.load_predictor` opens a ``model.safetensors`` (this module's
:class:`Predictor`) or an exported ``model.onnx`` (:class:`~deeppneumonia.inference.onnx.OnnxPredictor`) behind
the same interface.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from deeppneumonia.data.imageio import read_image
from deeppneumonia.errors import CheckpointError, ConfigError
from deeppneumonia.models.checkpoint import load_weights
from deeppneumonia.models.factory import load_classifier
from deeppneumonia.models.resnet import XRayResNet
from deeppneumonia.runtime.device import Runtime, eval_mode, resolve_runtime
from deeppneumonia.transforms.preprocessing import Preprocessing


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (the model's identity in the service's answers)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class DecisionMixin:
    """Classes, thresholds and the decision rule, shared by the PyTorch and ONNX predictors."""

    meta: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def multilabel(self) -> bool:
        return bool(self.meta["task"] == "multilabel")

    @property
    def thresholds(self) -> np.ndarray | None:
        """Per-class decision thresholds from the metadata, or None when the model has none."""
        t = self.meta.get("thresholds")
        return None if t is None else np.asarray(t, dtype=np.float32)

    @cached_property
    def pre(self) -> Preprocessing:
        """The preprocessing the model was trained with (from its metadata)."""
        return Preprocessing.from_meta(self.meta)

    @property
    def size(self) -> int:
        return self.pre.size

    def geometry(self, width: int, height: int) -> tuple[float, float, float, float]:
        """How original image pixels map onto the network input (sx, sy, dx, dy)."""
        return self.pre.geometry(width, height)

    def labels(self, probs: np.ndarray) -> list[list[str]]:
        """Decided labels per row of (B, C) probabilities.

        Multi-label: every class with ``p >= threshold`` (0.5 without thresholds). Multi-class: the single class
        maximising ``p / threshold`` (the argmax without thresholds).
        """
        t = self.thresholds
        if not self.multilabel:
            score = probs if t is None else probs / np.maximum(t, 1e-6)
            return [[self.classes[int(i)]] for i in score.argmax(1)]
        t = t if t is not None else np.full(len(self.classes), 0.5, np.float32)
        return [[c for c, p, th in zip(self.classes, row, t, strict=True) if p >= th] for row in probs]

    def above_threshold(self, probs: np.ndarray) -> list[list[str]] | None:
        """Per row, every class with ``p >= threshold``; None when the model has no thresholds."""
        t = self.thresholds
        if t is None:
            return None
        return [[c for c, p, th in zip(self.classes, row, t, strict=True) if p >= th] for row in probs]

    def explained_class(self, probs: np.ndarray) -> np.ndarray:
        """(B,) index of the class a heatmap shows by default: the decided one (largest ``p / threshold``)."""
        t = self.thresholds
        return np.asarray((probs if t is None else probs / np.maximum(t, 1e-6)).argmax(1))

    @property
    def model_info(self) -> dict[str, Any]:
        """The model's identity: file name, SHA-256 of the file, the toolkit version that wrote it, architecture."""
        source = getattr(self, "source", None)
        return {"file": None if source is None else Path(source).name, "sha256": getattr(self, "sha256", "") or None,
                "version": self.meta.get("versions", {}).get("deeppneumonia"), "arch": self.meta.get("arch"),
                "format": getattr(self, "format", "safetensors"), "precision": getattr(self, "precision", None)}


@dataclass
class Predictor(DecisionMixin):
    """A classifier ready for inference, with the preprocessing and thresholds saved beside its weights.

    Build it with :meth:`from_checkpoint`. ``source`` and ``sha256`` identify the file it was loaded from.
    """

    model: XRayResNet
    meta: dict[str, Any]
    rt: Runtime
    source: Path | None = None
    sha256: str = ""
    format: str = "safetensors"

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", precision: str = "fp32") -> Predictor:
        """Load a ``model.safetensors`` written by training.

        ``precision``: ``fp32`` (default, the reference), ``bf16`` (autocast; on CPUs with native bf16 about
        1.5-2.6x faster, probabilities within about 1e-2: docs/serving.md) or ``auto`` (bf16 where native, as
        :func:`~deeppneumonia.runtime.device.resolve_runtime`). The network runs channels-last (oneDNN's fast
        layout on CPU; the same numbers to float rounding).

        Raises:
            CheckpointError: not a classifier checkpoint, or weights that are not finite (NaN / inf).
        """
        _, meta = load_weights(path)
        if meta.get("kind") != "classifier":
            raise CheckpointError(f"{path}: holds a {meta.get('kind')!r}, not a classifier (model.safetensors)")
        if meta.get("task") not in ("multiclass", "multilabel"):
            raise CheckpointError(f"{path}: the metadata names no task (multiclass or multilabel): {meta.get('task')!r}")
        try:  # a checkpoint without valid preprocessing is refused here, not at the first image
            Preprocessing.from_meta(meta)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from exc
        model, meta, state = load_classifier(path)
        bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
        if bad:
            raise CheckpointError(f"{path}: the weights hold NaN or infinite values ({', '.join(bad[:3])}"
                                  f"{', ...' if len(bad) > 3 else ''}); the model would give no usable probabilities")
        if precision not in ("fp32", "bf16", "auto"):
            raise ConfigError(f"precision {precision!r}: choose fp32, bf16 or auto")
        rt = resolve_runtime(device, precision, channels_last=True)
        model = model.to(rt.device).to(memory_format=rt.memory_format).eval()
        return cls(model, meta, rt, Path(path), file_sha256(path))

    def preprocess(self, pixels: np.ndarray) -> Tensor:
        """(H, W) float [0, 1] -> (1, 1, S, S) normalised network input."""
        return self.pre.from_pixels(pixels, self.rt.device)

    def preprocess_uint8(self, images: Tensor) -> Tensor:
        """(B, 1, S, S) uint8 cache images -> normalised input."""
        return self.pre.from_uint8(images, self.rt.device)

    @property
    def precision(self) -> str:
        """What the network computes in: ``fp32``, ``bf16`` or ``fp16`` (autocast)."""
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.rt.dtype]

    def _on_device(self, x: Tensor) -> Tensor:
        """The input on the predictor's device, in its memory format."""
        return x.to(self.rt.device).contiguous(memory_format=self.rt.memory_format)

    def _probs(self, logits: Tensor) -> np.ndarray:
        """Logits -> probabilities as a float32 numpy array (softmax, or sigmoid for multi-label)."""
        logits = logits.float()
        probs = torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, 1)
        return probs.cpu().numpy()  # type: ignore[no-any-return]

    @torch.no_grad()
    def probabilities(self, x: Tensor) -> np.ndarray:
        """(B, 1, S, S) normalised input -> (B, C) probabilities (softmax, or sigmoid for multi-label)."""
        with eval_mode(self.model), self.rt.autocast():
            logits = self.model(self._on_device(x)).float()
        return self._probs(logits)

    def supports_heatmaps(self, layer: str = "layer4", method: str = "gradcam") -> bool:
        """Whether :meth:`predict` can draw heatmaps with this layer and method (always, for PyTorch)."""
        return True

    def predict(self, x: Tensor, heatmaps: bool = False, class_index: Sequence[int] | None = None,
                layer: str = "layer4", method: str = "gradcam") -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
        """Probabilities and, with ``heatmaps``, one heatmap per image, in as few passes as possible.

        At ``layer4`` of a plain classifier with Grad-CAM the heatmap comes from the same forward pass as the
        probabilities (exact CAM, no backward); otherwise the CAM method runs after the forward pass.

        Args:
            x: (B, 1, S, S) normalised input.
            heatmaps: also compute heatmaps.
            class_index: the class to explain per image (default: :meth:`explained_class`).
            layer: CAM layer; method: one of ``explain.METHODS``.

        Returns:
            (B, C) probabilities, (B, S, S) heatmaps in [0, 1] or None, (B,) explained class indices.
        """
        from deeppneumonia.inference import explain

        x = self._on_device(x)
        if heatmaps and explain.fast_cam_applies(self.model, layer, method):
            with torch.no_grad(), eval_mode(self.model), self.rt.autocast():
                feats = self.model.forward_features(x)
                logits = self.model.forward_head(feats)
            probs = self._probs(logits)
            idx = self.explained_class(probs) if class_index is None else np.asarray(class_index)
            heat = explain.cam_from_features(feats, self.model.fc.weight.detach(), idx.tolist(),
                                             (x.shape[-2], x.shape[-1]))
            return probs, heat, idx
        probs = self.probabilities(x)
        idx = self.explained_class(probs) if class_index is None else np.asarray(class_index)
        if not heatmaps:
            return probs, None, idx
        return probs, explain.gradcam(self.model, x, idx.tolist(), layer, method), idx

    def predict_files(self, paths: Sequence[str | Path]) -> np.ndarray:
        """(N, C) probabilities of image files (PNG, JPEG, DICOM), in the order given.

        Raises:
            ImageReadError: a file is not a readable image (``deeppneumonia predict`` reports and skips instead).
        """
        x = torch.cat([self.preprocess(read_image(p).pixels) for p in paths])
        return self.probabilities(x)

    def explain(self, paths: Sequence[str | Path], class_index: int | Sequence[int] | None = None,
                layer: str = "layer4", method: str = "gradcam") -> np.ndarray:
        """CAM heatmaps of image files as arrays: (N, S, S) float in [0, 1] at the network's input size.

        Args:
            paths: image files (PNG, JPEG, DICOM).
            class_index: the class to explain, one for all or one per image; default: the decided class.
            layer, method: as :func:`deeppneumonia.inference.explain.gradcam` (layer4 Grad-CAM needs no backward).
        """
        from deeppneumonia.inference import explain

        x = torch.cat([self.preprocess(read_image(p).pixels) for p in paths])
        idx = self.explained_class(self.probabilities(x)) if class_index is None else class_index
        cls = [int(i) for i in np.atleast_1d(np.asarray(idx))]
        return explain.gradcam(self.model, x, cls if len(cls) > 1 else cls[0], layer, method)
