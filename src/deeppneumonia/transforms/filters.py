"""Image filters shared by the augmentations and attention mining."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def gaussian_blur(x: Tensor, sigma: Tensor | float, padding: str = "replicate", max_sigma: float | None = None) -> Tensor:
    """Separable Gaussian blur, one sigma per image (or one for all).

    Args:
        x: (N, C, H, W) images.
        sigma: (N,) standard deviations in pixels (any device), or one float for every image.
        padding: ``F.pad`` mode at the borders (``replicate`` or ``reflect``).
        max_sigma: ``max(sigma)`` when the caller knows it, so a sigma on the GPU is not read back to the host.

    Returns:
        (N, C, H, W) blurred images, same dtype as ``x``; the kernel radius is ``ceil(3 * max(sigma))``.
    """
    n, c, h, w = x.shape
    if isinstance(sigma, Tensor):
        sig = sigma.to(x.device, torch.float32, non_blocking=True).reshape(-1).expand(n)
        top = max_sigma if max_sigma is not None else (float(sig.max()) if n else 1.0)
    else:
        sig, top = torch.full((n,), float(sigma), device=x.device), float(sigma)
    radius = max(1, math.ceil(3 * top)) if n else 1
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None] / sig[:, None].to(x.dtype)) ** 2)
    k = k / k.sum(1, keepdim=True)  # (N, K)
    xs = x.reshape(1, n * c, h, w)
    kx = k.repeat_interleave(c, 0)[:, None, None, :]
    xs = F.conv2d(F.pad(xs, (radius, radius, 0, 0), mode=padding), kx, groups=n * c)
    xs = F.conv2d(F.pad(xs, (0, 0, radius, radius), mode=padding), kx.transpose(2, 3), groups=n * c)
    return xs.reshape(n, c, h, w)
