"""Erasing the salient region of an image (Iterative Attention Mining's mining step)."""

from __future__ import annotations

import torch
from torch import Tensor

from deeppneumonia.transforms.filters import gaussian_blur


def erase(x: Tensor, mask: Tensor, fill: str, zero_value: float = 0.0) -> Tensor:
    """Replace the pixels of ``x`` (B, 1, H, W, normalised) where ``mask`` (B, 1, H, W bool) is set.

    ``mean``: the image's own mean (normalised units); ``zero``: ``zero_value`` (the normalised value of a black
    pixel); ``blur``: a coarse inpainting: the region is mean-filled, then the image is blurred with sigma = H / 16
    and the blurred values fill the region, so the surrounding anatomy's brightness flows in while the finding's
    own intensity and texture do not (a weaker give-away than a flat patch).
    """
    mean = x.mean((1, 2, 3), keepdim=True).expand_as(x)
    if fill == "mean":
        value = mean
    elif fill == "zero":
        value = torch.full_like(x, zero_value)
    elif fill == "blur":
        value = gaussian_blur(torch.where(mask, mean, x), max(1.0, x.shape[-1] / 16), padding="reflect")
    else:
        raise ValueError(f"unknown erase fill {fill!r}; choose mean, zero or blur")
    return torch.where(mask, value, x)
