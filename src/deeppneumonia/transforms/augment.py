"""Batched augmentation of grey radiographs, on whatever device the batch lives on.

Image and lesion mask share one random geometric draw (random resized crop, small rotation, optional
flip) applied with one ``grid_sample``; intensity changes (brightness, contrast, gamma, blur, noise)
touch the image only. Strengths are relative to the image: crop as an area fraction, rotation in degrees,
blur sigma as a fraction of the side (``blur_sigma_rel``; ``blur_sigma`` in pixels still works). No hue
or colour jitter: the images have one grey channel.

Every per-image random number comes from a CPU ``torch.Generator`` (so a seed gives the same crops, rotations,
intensities and blurs on CPU and GPU, and a resumed run the same draws); they travel to a GPU as one small
pinned, non-blocking copy per batch. The full-size noise is drawn where the images are: from ``g`` itself on
the CPU, and on a GPU from a device generator seeded by one draw of ``g`` (no image-sized host copy).
Augmentation always computes in fp32 with autocast off: the sampling grid in bf16 is off by up to 0.7 px at
224 px, and a half-precision blur would not fit back into the fp32 batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from deeppneumonia.config import AugmentConfig
from deeppneumonia.transforms.filters import gaussian_blur


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> Tensor:
    """``n`` draws from U(lo, hi) with generator ``g`` (on the CPU)."""
    return torch.rand(n, generator=g) * (hi - lo) + lo


def to_device(t: Tensor, dev: torch.device) -> Tensor:
    """A small CPU tensor on ``dev`` without a host sync: pinned, then copied asynchronously on CUDA."""
    if dev.type != "cuda":
        return t.to(dev)
    return t.pin_memory().to(dev, non_blocking=True)


def random_affine(n: int, cfg: AugmentConfig, g: torch.Generator, size: tuple[int, int] = (0, 0)) -> Tensor:
    """(n, 2, 3) sampling matrices for ``F.affine_grid`` (output -> input, normalised coordinates).

    ``size`` (H, W) turns ``cfg.shift`` into whole-pixel translations.
    """
    if tuple(cfg.crop_scale) == (1.0, 1.0):  # no resized crop
        sw = sh = torch.ones(n)
        cx = cy = torch.zeros(n)
    else:
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
    if cfg.shift > 0 and min(size) > 0:  # whole pixels: 2 / side is one pixel in normalised coordinates
        for axis, side in ((0, size[1]), (1, size[0])):
            most = round(cfg.shift * side)
            theta[:, axis, 2] += torch.randint(-most, most + 1, (n,), generator=g).float() * 2 / side
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
        Augmented fp32 images in [0, 1] and masks moved by the same geometric transform.
    """
    n, dev = images.shape[0], images.device
    # the per-image draws, in a fixed order on the CPU generator, then one copy to the device
    cols = [random_affine(n, cfg, g, (int(images.shape[-2]), int(images.shape[-1]))).reshape(n, 6)]
    ones, zeros = torch.ones(n), torch.zeros(n)
    cols.append(_uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, g) if cfg.contrast > 0 else ones)
    cols.append(_uniform(n, -cfg.brightness, cfg.brightness, g) * 0.5 if cfg.brightness > 0 else zeros)
    lg = math.log(1 + cfg.gamma)
    cols.append(torch.exp(_uniform(n, -lg, lg, g)) if cfg.gamma > 0 else ones)
    idx: Tensor | None = None
    max_sigma = 0.0
    if cfg.blur_prob > 0:
        chosen = torch.rand(n, generator=g) < cfg.blur_prob
        if chosen.any():
            lo, hi = blur_sigma_px(cfg, images.shape[-1])
            sigma = _uniform(int(chosen.sum()), lo, hi, g).clamp_min(1e-3)
            idx, max_sigma = chosen.nonzero().squeeze(1), float(sigma.max())
            full = torch.zeros(n)
            full[idx] = sigma
            cols.append(full)
    params = to_device(torch.cat([c.reshape(n, -1) for c in cols], 1), dev)
    noise_seed = int(torch.randint(0, 2**62, (1,), generator=g)) if cfg.noise_std > 0 and dev.type != "cpu" else None
    shape = (n, 1, 1, 1)
    with torch.autocast(dev.type, enabled=False):
        images = images.float()
        grid = F.affine_grid(params[:, :6].reshape(n, 2, 3), list(images.shape), align_corners=False)
        out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if masks is not None:
            masks = F.grid_sample(masks.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if cfg.contrast > 0:
            mean = out.mean(dim=(1, 2, 3), keepdim=True)
            out = (out - mean) * params[:, 6].view(shape) + mean
        if cfg.brightness > 0:
            out = out + params[:, 7].view(shape)
        out = out.clamp(0, 1)
        if cfg.gamma > 0:
            out = out.clamp_min(1e-6) ** params[:, 8].view(shape)
        if idx is not None:
            didx = to_device(idx, dev)
            out = out.index_copy(0, didx, gaussian_blur(out[didx], params[didx, 9], max_sigma=max_sigma))
        if cfg.noise_std > 0:
            if noise_seed is None:  # CPU: straight from g
                noise = torch.randn(out.shape, generator=g)
            else:
                gd = torch.Generator(device=dev).manual_seed(noise_seed)
                noise = torch.randn(out.shape, generator=gd, device=dev)
            out = out + noise * cfg.noise_std
    return out.clamp(0, 1), masks
