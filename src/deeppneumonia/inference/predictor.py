"""One inference API: a predictor built from a saved classifier (used by evaluate, explain, predict, serve).

Preprocessing comes from the checkpoint's metadata and is the same as training's: resize to the working
size with the cache's resize (including the uint8 rounding), normalise with the stored mean/std.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from deeppneumonia.data.imageio import read_image
from deeppneumonia.errors import CheckpointError
from deeppneumonia.models.checkpoint import load_weights
from deeppneumonia.models.factory import load_classifier
from deeppneumonia.models.resnet import XRayResNet
from deeppneumonia.runtime.device import Runtime, eval_mode, resolve_runtime
from deeppneumonia.transforms.preprocessing import Preprocessing


@dataclass
class Predictor:
    model: XRayResNet
    meta: dict[str, Any]
    rt: Runtime

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", precision: str = "fp32") -> Predictor:
        _, meta = load_weights(path)
        if meta.get("kind") != "classifier":
            raise CheckpointError(f"{path}: holds a {meta.get('kind')!r}, not a classifier (model.safetensors)")
        if meta.get("task") not in ("multiclass", "multilabel"):
            raise CheckpointError(f"{path}: the metadata names no task (multiclass or multilabel): {meta.get('task')!r}")
        try:  # a checkpoint without valid preprocessing is refused here, not at the first image
            Preprocessing.from_meta(meta)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from exc
        rt = resolve_runtime(device, precision, channels_last=False)
        model, meta, _ = load_classifier(path)
        return cls(model.to(rt.device).eval(), meta, rt)

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def multilabel(self) -> bool:
        return bool(self.meta["task"] == "multilabel")

    @cached_property
    def pre(self) -> Preprocessing:
        """The preprocessing the model was trained with (from its metadata)."""
        return Preprocessing.from_meta(self.meta)

    @property
    def size(self) -> int:
        return self.pre.size

    @property
    def thresholds(self) -> np.ndarray | None:
        t = self.meta.get("thresholds")
        return None if t is None else np.asarray(t, dtype=np.float32)

    def geometry(self, width: int, height: int) -> tuple[float, float, float, float]:
        """How original image pixels map onto the network input (sx, sy, dx, dy)."""
        return self.pre.geometry(width, height)

    def preprocess(self, pixels: np.ndarray) -> Tensor:
        """(H, W) float [0, 1] -> (1, 1, S, S) normalised network input."""
        return self.pre.from_pixels(pixels, self.rt.device)

    def preprocess_uint8(self, images: Tensor) -> Tensor:
        """(B, 1, S, S) uint8 cache images -> normalised input."""
        return self.pre.from_uint8(images, self.rt.device)

    @torch.no_grad()
    def probabilities(self, x: Tensor) -> np.ndarray:
        """(B, 1, S, S) normalised input -> (B, C) probabilities (softmax, or sigmoid for multi-label)."""
        with eval_mode(self.model), self.rt.autocast():
            logits = self.model(x.to(self.rt.device)).float()
        probs = torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, 1)
        return probs.cpu().numpy()

    def predict_files(self, paths: Sequence[str | Path]) -> np.ndarray:
        x = torch.cat([self.preprocess(read_image(p).pixels) for p in paths])
        return self.probabilities(x)

    def labels(self, probs: np.ndarray) -> list[list[str]]:
        """Thresholded labels: argmax for multi-class; per-class thresholds (default 0.5) for multi-label."""
        if not self.multilabel:
            return [[self.classes[int(i)]] for i in probs.argmax(1)]
        t = self.thresholds if self.thresholds is not None else np.full(len(self.classes), 0.5)
        return [[c for c, p, th in zip(self.classes, row, t, strict=True) if p >= th] for row in probs]
