"""Lesion boxes to masks at any resolution (the mask+ / mask- of the paper's Fig. 5).

A pixel's value is the fraction of its area covered by the union of boxes (exact for one box, the max
over boxes where boxes overlap), so masks stay correct when the target grid is coarse (a 7x7 ResNet
stage) or does not divide the image size. ``mask- = 1 - mask+``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from deeppneumonia.data.manifest import Box


def _coverage(lo: torch.Tensor, hi: torch.Tensor, n: int, extent: torch.Tensor) -> torch.Tensor:
    """Fraction of each of ``n`` cells spanning [0, extent) that lies inside [lo, hi). Shapes (..., 1) -> (..., n)."""
    step = extent / n
    edges = torch.arange(n, device=lo.device, dtype=lo.dtype)
    c0, c1 = edges * step, (edges + 1) * step
    return ((torch.minimum(hi, c1) - torch.maximum(lo, c0)).clamp(min=0) / step).clamp(max=1)


def boxes_to_mask_tensor(boxes: torch.Tensor, image_size: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """Batched soft masks from padded boxes.

    Args:
        boxes: (N, K, 4) boxes as x, y, w, h in each image's pixels; padding boxes have w = 0 or h = 0.
        image_size: (N, 2) width, height of each image the boxes refer to.
        out_hw: output (H, W).

    Returns:
        (N, 1, H, W) float mask+ in [0, 1]; all zeros for images without boxes.
    """
    h, w = out_hw
    b = boxes.to(torch.float32)
    size = image_size.to(device=b.device, dtype=torch.float32)
    x0, y0 = b[..., 0:1], b[..., 1:2]
    x1, y1 = x0 + b[..., 2:3], y0 + b[..., 3:4]
    cov_x = _coverage(x0, x1, w, size[:, None, 0:1])  # (N, K, W)
    cov_y = _coverage(y0, y1, h, size[:, None, 1:2])  # (N, K, H)
    if b.shape[1] == 0:
        return torch.zeros(b.shape[0], 1, h, w, device=b.device)
    mask = (cov_y[..., :, None] * cov_x[..., None, :]).amax(dim=1)  # (N, H, W)
    return mask[:, None]


def boxes_to_mask(boxes: Sequence[Box], width: float, height: float, out_hw: tuple[int, int]) -> torch.Tensor:
    """(H, W) mask+ of one image of size width x height whose boxes are in its pixels."""
    t = torch.tensor([[[b.x, b.y, b.w, b.h] for b in boxes]], dtype=torch.float32).reshape(1, -1, 4)
    return boxes_to_mask_tensor(t, torch.tensor([[width, height]]), out_hw)[0, 0]


def pad_boxes(box_lists: Sequence[Sequence[Box]], max_boxes: int | None = None) -> torch.Tensor:
    """(N, K, 4) tensor of x, y, w, h with zero-size padding, K = the largest count (or ``max_boxes``)."""
    k = max([len(b) for b in box_lists] + [1]) if max_boxes is None else max_boxes
    out = torch.zeros(len(box_lists), k, 4)
    for i, boxes in enumerate(box_lists):
        for j, b in enumerate(list(boxes)[:k]):
            out[i, j] = torch.tensor([b.x, b.y, b.w, b.h])
    return out
