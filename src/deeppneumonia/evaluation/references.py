"""Reference rows of every localization table: what the map's grid allows and what a fixed guess gets.

The oracle is the ground-truth box mask average-pooled to a heatmap's own grid and upsampled as CAM maps are, so
each method's score can be read against its grid's ceiling; the centre prior is a fixed central blob that needs
no model. Scoring is that of :mod:`deeppneumonia.evaluation.localization`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from deeppneumonia.evaluation.localization import (
    Box,
    box_mask,
    boxes_by_class,
    localization_scores,
    summarize_localization,
)

# --- references: what the grid allows (oracle) and what a fixed guess gets (centre prior) ---------------------

STRIDES = {"layer1": 4, "layer2": 8, "layer3": 16, "layer4": 32}


def feature_grid(size: int | tuple[int, int], layer: str | int) -> tuple[int, int]:
    """(h, w) of a ResNet stage's output for an input of ``size`` pixels (``layer4`` or 4; stride 4 .. 32).

    Each stride-2 step (3x3 convolution or max pooling with padding 1) maps n to ceil(n / 2).
    """
    name = f"layer{layer}" if isinstance(layer, int) else layer
    if name not in STRIDES:
        raise ValueError(f"unknown layer {layer!r}; choose one of {sorted(STRIDES)}")
    hw = (size, size) if isinstance(size, int) else size
    halvings = int(math.log2(STRIDES[name]))
    out = []
    for n in hw:
        for _ in range(halvings):
            n = (n + 1) // 2
        out.append(int(n))
    return out[0], out[1]


def grid_label(grid: tuple[int, int] | None) -> str:
    """``"4x4"`` for (4, 4); ``"full"`` for a map with no coarser grid (None)."""
    return "full" if grid is None else f"{grid[0]}x{grid[1]}"


def oracle_heatmap(boxes: Sequence[Box], shape: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """The best map a ``grid``-resolution method can produce: the box mask pooled to ``grid``, upsampled back.

    Args:
        boxes: ground-truth (x, y, w, h) boxes in the (H, W) pixels of ``shape``.
        shape: (H, W) of the heatmaps being scored.
        grid: (h, w) of the method's own map (e.g. :func:`feature_grid` of its layer).

    Returns:
        (H, W) float32: the union-of-boxes mask (:func:`box_mask`) average-pooled to ``grid`` (adaptive average
        pooling: each cell holds the box coverage of its area), then upsampled bilinearly with
        ``align_corners=False`` as :func:`deeppneumonia.models.cam.normalized_maps` upsamples CAM.
    """
    import torch
    import torch.nn.functional as F

    mask = torch.from_numpy(box_mask(boxes, shape).astype(np.float32))[None, None]
    pooled = F.adaptive_avg_pool2d(mask, (int(grid[0]), int(grid[1])))
    up = F.interpolate(pooled, size=(int(shape[0]), int(shape[1])), mode="bilinear", align_corners=False)
    return up[0, 0].numpy()


def centre_prior_map(shape: tuple[int, int]) -> np.ndarray:
    """(H, W) float32 Gaussian at the image centre, sigma = a quarter of each side: the same map for every image.

    A reference for what the scores give without looking at the image (SIIM's opacities lie in both lungs,
    left and right of the centre, and are large, so a central blob overlaps them often).
    """
    h, w = int(shape[0]), int(shape[1])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.exp(-(((yy + 0.5 - h / 2) / (h / 4)) ** 2 + ((xx + 0.5 - w / 2) / (w / 4)) ** 2) / 2).astype(np.float32)




def reference_scores(boxes: Sequence[Sequence[Box]], shape: tuple[int, int],
                     grids: Sequence[tuple[int, int]], threshold: float = 0.5) -> dict[str, dict[str, Any]]:
    """Scores of the centre prior and of the oracle at each grid, on the same (image, boxes) items.

    Args:
        boxes: per scored item, its ground-truth (x, y, w, h) boxes in the (H, W) pixels of ``shape``.
        shape: (H, W) of the heatmaps.
        grids: the grids of the maps being compared (duplicates are scored once).
        threshold: as in :func:`localization_scores`.

    Returns:
        ``{"centre prior": summary, "oracle 2x2": summary, ...}``; each summary is that of
        :func:`summarize_localization` plus ``"grid"`` (``"full"`` or ``"hxw"``) and ``"per_image"`` (the
        per-item score lists of every key, for paired comparisons).
    """
    prior = centre_prior_map(shape)
    out: dict[str, dict[str, Any]] = {}
    maps: list[tuple[str, tuple[int, int] | None]] = [("centre prior", None)]
    for g in dict.fromkeys((int(a), int(b)) for a, b in grids):
        maps.append((f"oracle {grid_label(g)}", g))
    for name, grid in maps:
        rows = [localization_scores(prior if grid is None else oracle_heatmap(b, shape, grid), b, threshold)
                for b in boxes]
        summary = summarize_localization(rows)
        summary["grid"] = grid_label(grid)
        summary["per_image"] = {k: [r[k] for r in rows] for k in (rows[0] if rows else {})}
        out[name] = summary
    return out


def cache_reference_scores(cache: Any, indices: Sequence[int], classes: Sequence[str], multilabel: bool,
                           grids: Sequence[tuple[int, int]], max_images: int | None = None) -> dict[str, dict[str, Any]]:
    """:func:`reference_scores` on the boxed images among ``indices`` of a cache (``cache.boxes(i)``,
    ``cache.manifest.records[i].target``, square ``cache.size``), one item per (image, class with boxes) as
    :func:`boxes_by_class` gives; at most ``max_images`` boxed images. ``per_image`` lists are dropped."""
    boxed = [int(i) for i in indices if cache.boxes(int(i))]
    if max_images is not None:
        boxed = boxed[:max_images]
    items = [b for i in boxed
             for _, b in boxes_by_class(cache.boxes(i), cache.manifest.records[i].target, classes, multilabel)]
    if not items:
        return {}
    refs = reference_scores(items, (int(cache.size), int(cache.size)), grids)
    for summ in refs.values():
        summ.pop("per_image", None)
    return refs
