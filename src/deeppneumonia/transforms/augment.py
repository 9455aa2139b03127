"""Batched augmentation of grey radiographs, on whatever device the batch lives on.

Image and lesion mask share one random geometric draw (random resized crop, small rotation, optional
flip) applied with one ``grid_sample``; intensity changes (brightness, contrast, gamma, blur, noise)
touch the image only. Strengths are relative to the image: crop as an area fraction, rotation in degrees,
blur sigma as a fraction of the side (``blur_sigma_rel``; ``blur_sigma`` in pixels still works). No hue
or colour jitter: the images have one grey channel. Random numbers come from a CPU ``torch.Generator``, so a
seed gives the same augmentations on CPU and GPU.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from deeppneumonia.config import AugmentConfig
from deeppneumonia.transforms.filters import gaussian_blur


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> Tensor:
    return torch.rand(n, generator=g) * (hi - lo) + lo


def random_affine(n: int, cfg: AugmentConfig, g: torch.Generator) -> Tensor:
    """(n, 2, 3) sampling matrices for ``F.affine_grid`` (output -> input, normalised coordinates)."""
    area = _uniform(n, cfg.crop_scale[0], cfg.crop_scale[1], g)
    log_ratio = _uniform(n, math.log(3 / 4), math.log(4 / 3), g)
    ratio = torch.exp(log_ratio)
    sw = torch.sqrt(area * ratio).clamp(max=1.0)
    sh = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(n, generator=g) * 2 - 1) * (1 - sw)
    cy = (torch.rand(n, generator=g) * 2 - 1) * (1 - sh)
    ang = _uniform(n, -cfg.rotate_deg, cfg.rotate_deg, g) * math.pi / 180
    flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0) if cfg.hflip else torch.ones(n)
    cos, sin = torch.cos(ang), torch.sin(ang)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos * sw * flip
    theta[:, 0, 1] = -sin * sh
    theta[:, 1, 0] = sin * sw * flip
    theta[:, 1, 1] = cos * sh
    theta[:, 0, 2] = cx
    theta[:, 1, 2] = cy
    return theta


def blur_sigma_px(cfg: AugmentConfig, side: int) -> tuple[float, float]:
    """The blur sigma range in pixels for images ``side`` pixels wide: ``blur_sigma`` if set, else
    ``blur_sigma_rel`` x ``side`` (so one preset blurs alike at every size)."""
    if cfg.blur_sigma is not None:
        return cfg.blur_sigma
    return cfg.blur_sigma_rel[0] * side, cfg.blur_sigma_rel[1] * side


def augment(images: Tensor, masks: Tensor | None, cfg: AugmentConfig, g: torch.Generator) -> tuple[Tensor, Tensor | None]:
    """Augment a batch.

    Args:
        images: (N, 1, H, W) float in [0, 1].
        masks: (N, 1, H, W) float lesion masks (mask+) or None.
        cfg: what to apply.
        g: CPU generator for every random draw.

    Returns:
        Augmented images in [0, 1] and masks moved by the same geometric transform.
    """
    n, dev = images.shape[0], images.device
    theta = random_affine(n, cfg, g).to(dev, images.dtype)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if masks is not None:
        masks = F.grid_sample(masks.to(images.dtype), grid, mode="bilinear", padding_mode="zeros",
                              align_corners=False)
    shape = (n, 1, 1, 1)
    if cfg.contrast > 0:
        c = _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, g).to(dev).view(shape)
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = (out - mean) * c + mean
    if cfg.brightness > 0:
        out = out + _uniform(n, -cfg.brightness, cfg.brightness, g).to(dev).view(shape) * 0.5
    out = out.clamp(0, 1)
    if cfg.gamma > 0:
        lg = math.log(1 + cfg.gamma)
        out = out.clamp_min(1e-6) ** torch.exp(_uniform(n, -lg, lg, g)).to(dev).view(shape)
    if cfg.blur_prob > 0:
        chosen = torch.rand(n, generator=g) < cfg.blur_prob
        if chosen.any():
            lo, hi = blur_sigma_px(cfg, images.shape[-1])
            sigma = _uniform(int(chosen.sum()), lo, hi, g).clamp_min(1e-3)
            idx = chosen.nonzero().squeeze(1).to(dev)
            out = out.index_copy(0, idx, gaussian_blur(out[idx], sigma).to(out.dtype))  # autocast may halve it
    if cfg.noise_std > 0:
        noise = torch.randn(out.shape, generator=g).to(dev)
        out = out + noise * cfg.noise_std
    return out.clamp(0, 1), masks
