"""The one preprocessing contract: what turns an image into the network's input, for training and inference alike.

A :class:`Preprocessing` is built from the run's config when training (:meth:`Preprocessing.from_config`),
stored in the metadata of every saved classifier (:meth:`Preprocessing.to_meta`), and rebuilt from it by
evaluation, prediction, serving and export (:meth:`Preprocessing.from_meta`), so the input a model sees at
inference is the one it was trained on: resize to ``size`` with the cache's resize (including the uint8
rounding), scale to [0, 1], then ``(x - mean) / std``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from deeppneumonia.config import DataConfig
from deeppneumonia.data.cache import geometry, resize_image
from deeppneumonia.errors import CheckpointError


@dataclass(frozen=True)
class Preprocessing:
    """Working size (square, pixels), resize mode (``squash`` or ``letterbox``), normalisation mean and std."""

    size: int
    resize: str
    mean: float
    std: float

    @classmethod
    def from_config(cls, d: DataConfig) -> Preprocessing:
        """The preprocessing of a run (``data.size``, ``data.resize``, ``data.mean``, ``data.std``)."""
        return cls(d.size, d.resize, d.mean, d.std)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Preprocessing:
        """The preprocessing stored in a checkpoint's metadata.

        Raises:
            CheckpointError: the metadata has no complete ``preprocessing`` entry.
        """
        p = meta.get("preprocessing")
        try:
            return cls(int(p["size"]), str(p["resize"]), float(p["mean"]), float(p["std"]))  # type: ignore[index]
        except (TypeError, KeyError, ValueError) as exc:
            raise CheckpointError(f"checkpoint metadata has no valid preprocessing (size, resize, mean, std): {p!r}"
                                  ) from exc

    def to_meta(self) -> dict[str, Any]:
        """The JSON-ready entry stored as ``meta["preprocessing"]``."""
        return asdict(self)

    def normalize(self, x: Tensor) -> Tensor:
        """Float images in [0, 1] (any shape) -> network input ``(x - mean) / std``."""
        return (x - self.mean) / self.std

    def from_uint8(self, images: Tensor, device: torch.device | str = "cpu") -> Tensor:
        """(B, 1, S, S) uint8 cache images -> normalised float input on ``device``."""
        return self.normalize(images.to(device).float() / 255.0)

    def resize_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """(H, W) float [0, 1] -> (S, S) uint8 at the working size, exactly as the cache stores it."""
        return resize_image(pixels, self.size, self.resize)

    def from_pixels(self, pixels: np.ndarray, device: torch.device | str = "cpu") -> Tensor:
        """(H, W) float [0, 1] -> (1, 1, S, S) normalised input on ``device``."""
        return self.from_uint8(torch.from_numpy(self.resize_pixels(pixels))[None, None], device)

    def geometry(self, width: int, height: int) -> tuple[float, float, float, float]:
        """How original image pixels map onto the network input (sx, sy, dx, dy)."""
        return geometry(width, height, self.size, self.resize)
