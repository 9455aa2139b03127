"""Scoring heatmaps (Grad-CAM, attention maps) against radiologists' lesion boxes.

Protocols:

* **T(IoU) accuracy** of the weakly-supervised localization literature on ChestX-ray14 (Wang et al. 2017;
  Cai et al. 2018, "Iterative attention mining"): the min-max normalised heatmap is thresholded, each
  connected component of the thresholded mask gives a predicted box, and an image counts as correctly
  localized at T(IoU)=t when some predicted box has IoU >= t with some ground-truth box. Reported for
  t in :data:`IOU_THRESHOLDS` (0.1 ... 0.7).
* **Pointing game** (Zhang et al. 2016): a hit when the heatmap's maximum lies inside a ground-truth box,
  or within ``tolerance_px`` pixels of one (the paper uses 15 px at image resolution). **Tie rule**: the
  "maximum" is not the first maximal pixel in raster order (with coarse maps upsampled bilinearly the maximum is
  a plateau, and which pixel of it comes first depends on float rounding) but the centroid of the largest
  connected region of pixels within ``TIE_EPS`` (1e-4) of the normalised maximum; when several such regions
  are equally large, each counts with equal weight, so the score is the fraction of them that hit
  (:func:`pointing_score`).
* **Energy inside the boxes** (the "energy-based pointing game" of Score-CAM, Wang et al. 2020): the share
  of the normalised heatmap's mass that falls inside the union of the boxes.
* **Mask IoU**: IoU of the thresholded heatmap, as a pixel mask, with the union-of-boxes mask.

Conventions:

* Heatmaps are (H, W) float arrays of any range; they are min-max normalised to [0, 1] internally. They
  must be finite (``ValueError`` otherwise).
* Boxes are (x, y, w, h) floats in the heatmap's own pixel grid (the caller rescales from image pixels):
  x to the right (columns), y down (rows), origin at the top-left corner of pixel (0, 0). Pixel (i, j)
  (row i, column j) is inside a box when its centre (j + 0.5, i + 0.5) satisfies x <= j + 0.5 < x + w and
  y <= i + 0.5 < y + h, so an integer box covers exactly columns x .. x+w-1 and rows y .. y+h-1. Boxes with
  w <= 0 or h <= 0 are ignored (padding).
* **Constant heatmap** (max == min, e.g. an all-zero Grad-CAM): it carries no localization evidence. Its
  thresholded mask is taken to be *empty* whatever the threshold, so it has no predicted boxes
  (``max_box_iou`` = 0, every ``tiou@t`` = 0) and ``mask_iou`` = 0; the pointing game counts it as a miss;
  its energy is that of a uniform map, i.e. the area share of the box-union mask.
* Every score is a plain Python ``float`` (``bool`` for :func:`pointing_hit`), so results are JSON-ready.

References, so that each score is read against what the map's grid allows (issue 18):

* **Oracle ceiling** (:func:`oracle_heatmap`): the ground-truth box mask average-pooled to the heatmap's own
  grid (e.g. 2x2 for ``layer4`` at 64 px) and upsampled bilinearly (``align_corners=False``) the way CAM and
  Grad-CAM are. No map computed on that grid can localize much better than this.
* **Centre prior** (:func:`centre_prior_map`): one fixed Gaussian at the image centre for every image.
* **Which class's map** (:func:`boxes_by_class`): a multi-class image is scored with its labelled class; a
  multi-label image once per finding that has boxes, with the boxes of that finding (matched by the box label).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any, Protocol

import numpy as np
from scipy import ndimage

Box = tuple[float, float, float, float]

IOU_THRESHOLDS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)

# Pixels within TIE_EPS of the normalised maximum (1.0) are maximal: well above float round-off of bilinear
# upsampling (~1e-7), well below any real difference of a learned map.
TIE_EPS = 1e-4

# 8-connectivity: diagonal neighbours belong to the same component (as skimage.measure.label's default).
_STRUCTURE = np.ones((3, 3), dtype=bool)


def _tiou_key(t: float) -> str:
    """The result key of the tIoU threshold ``t`` (``tiou@0.5``)."""
    return f"tiou@{t:g}"


def _as_heatmap(heatmap: np.ndarray) -> np.ndarray:
    """Validated float64 copy/view of ``heatmap``, shape (H, W)."""
    arr = np.asarray(heatmap, dtype=np.float64)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"heatmap must be a non-empty (H, W) array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("heatmap contains NaN or infinite values")
    return arr


def _normalise(heatmap: np.ndarray) -> tuple[np.ndarray, bool]:
    """Min-max normalised heatmap, shape (H, W), values in [0, 1], and whether it was constant.

    A constant heatmap normalises to all zeros (flag True).
    """
    arr = _as_heatmap(heatmap)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros_like(arr), True
    return (arr - lo) / (hi - lo), False


def _thresholded(heatmap: np.ndarray, threshold: float) -> np.ndarray:
    """(H, W) bool mask ``normalised heatmap >= threshold``; empty for a constant heatmap."""
    norm, constant = _normalise(heatmap)
    if constant:
        return np.zeros(norm.shape, dtype=bool)
    return norm >= threshold


def _valid_boxes(boxes: Sequence[Box]) -> np.ndarray:
    """(K, 4) float array of the boxes with positive width and height."""
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return arr[(arr[:, 2] > 0) & (arr[:, 3] > 0)]


def box_mask(boxes: Sequence[Box], shape: tuple[int, int]) -> np.ndarray:
    """Union-of-boxes mask.

    Args:
        boxes: K boxes (x, y, w, h) in the grid's pixels; boxes with w <= 0 or h <= 0 are ignored.
        shape: (H, W) of the grid.

    Returns:
        (H, W) bool array, True at pixel (i, j) when its centre (j + 0.5, i + 0.5) lies in some box
        (x <= j + 0.5 < x + w and y <= i + 0.5 < y + h).
    """
    h, w = int(shape[0]), int(shape[1])
    mask = np.zeros((h, w), dtype=bool)
    cx = np.arange(w, dtype=np.float64) + 0.5
    cy = np.arange(h, dtype=np.float64) + 0.5
    for bx, by, bw, bh in _valid_boxes(boxes):
        cols = (cx >= bx) & (cx < bx + bw)
        rows = (cy >= by) & (cy < by + bh)
        mask |= rows[:, None] & cols[None, :]
    return mask


def heatmap_boxes(heatmap: np.ndarray, threshold: float = 0.5, min_area: int = 1) -> list[Box]:
    """Bounding boxes of the connected components of the thresholded heatmap.

    Args:
        heatmap: (H, W) float array, any range (min-max normalised internally).
        threshold: a pixel is foreground when its normalised value is >= ``threshold``.
        min_area: components with fewer foreground pixels than this are dropped.

    Returns:
        One (x, y, w, h) box per kept component (8-connectivity), in the order scipy labels them
        (raster order of each component's first pixel). Boxes are pixel-aligned: a component spanning
        columns c0..c1 and rows r0..r1 gives (c0, r0, c1 - c0 + 1, r1 - r0 + 1), so :func:`box_mask` of the
        box covers exactly the component's bounding rectangle. Empty for a constant heatmap.
    """
    mask = _thresholded(heatmap, threshold)
    labels, n = ndimage.label(mask, structure=_STRUCTURE)
    if n == 0:
        return []
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    out: list[Box] = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None or areas[k] < min_area:
            continue
        sy, sx = sl
        out.append((float(sx.start), float(sy.start), float(sx.stop - sx.start), float(sy.stop - sy.start)))
    return out


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x, y, w, h) boxes (continuous areas); 0 when the union is empty."""
    ax, ay, aw, ah = (float(v) for v in a)
    bx, by, bw, bh = (float(v) for v in b)
    aw, ah, bw, bh = max(aw, 0.0), max(ah, 0.0), max(bw, 0.0), max(bh, 0.0)
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return float(inter / union) if union > 0 else 0.0


def _maximal_points(norm: np.ndarray, tie_eps: float) -> list[tuple[float, float]]:
    """(x, y) centroids of the largest connected regions (8-connectivity) of pixels >= 1 - ``tie_eps``.

    One point unless several regions are equally large; in raster order of their first pixel.
    """
    labels, n = ndimage.label(norm >= 1.0 - tie_eps, structure=_STRUCTURE)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    largest = [k + 1 for k in np.flatnonzero(sizes == sizes.max())]
    grid = np.indices(norm.shape)
    rows, cols = grid[0], grid[1]
    out = []
    for k in largest:
        sel = labels == k
        out.append((float(cols[sel].mean()) + 0.5, float(rows[sel].mean()) + 0.5))
    return out


def _point_hits(px: float, py: float, valid: np.ndarray, tolerance_px: float) -> bool:
    """Is the point (x, y) inside some box rectangle (x <= px < x + w, y <= py < y + h) or within tolerance?"""
    inside = ((valid[:, 0] <= px) & (px < valid[:, 0] + valid[:, 2])
              & (valid[:, 1] <= py) & (py < valid[:, 1] + valid[:, 3]))
    if inside.any():
        return True
    if tolerance_px <= 0:
        return False
    dx = np.maximum(np.maximum(valid[:, 0] - px, 0.0), px - (valid[:, 0] + valid[:, 2]))
    dy = np.maximum(np.maximum(valid[:, 1] - py, 0.0), py - (valid[:, 1] + valid[:, 3]))
    return bool(np.min(np.hypot(dx, dy)) <= tolerance_px)


def pointing_score(heatmap: np.ndarray, boxes: Sequence[Box], tolerance_px: float = 0.0,
                   tie_eps: float = TIE_EPS) -> float:
    """Pointing game with a defined tie rule, in [0, 1].

    Args:
        heatmap: (H, W) float array, any range.
        boxes: ground-truth (x, y, w, h) boxes in the heatmap's pixels.
        tolerance_px: also a hit when the point is within this Euclidean distance (pixels) of a box rectangle.
        tie_eps: pixels whose normalised value is >= 1 - ``tie_eps`` are maximal.

    The point is the centroid (mean of the pixel centres) of the largest connected region (8-connectivity) of
    maximal pixels; a hit when it lies in a box rectangle (x <= px < x + w, y <= py < y + h) or within
    ``tolerance_px`` of one. When k regions are equally large the score is the fraction of their centroids
    that hit (the expected hit of a uniformly random choice), so it never depends on raster order. A single
    maximal pixel gives the classic rule (its centre is inside a box exactly when :func:`box_mask` holds it).
    A constant heatmap has no maximum: 0. No boxes: 0.
    """
    norm, constant = _normalise(heatmap)
    valid = _valid_boxes(boxes)
    if constant or len(valid) == 0:
        return 0.0
    points = _maximal_points(norm, tie_eps)
    return float(sum(_point_hits(px, py, valid, tolerance_px) for px, py in points) / len(points))


def pointing_hit(heatmap: np.ndarray, boxes: Sequence[Box], tolerance_px: float = 0.0,
                 tie_eps: float = TIE_EPS) -> bool:
    """Pointing game as a yes/no: True when :func:`pointing_score` is 1 (every tied maximal region hits).

    With one largest maximal region (the usual case) this is "its centroid lies in a box, or within
    ``tolerance_px`` of one". A constant heatmap or no boxes: a miss.
    """
    return pointing_score(heatmap, boxes, tolerance_px, tie_eps) >= 1.0


def energy_inside(heatmap: np.ndarray, boxes: Sequence[Box]) -> float:
    """Share of the normalised heatmap's mass inside the union of boxes, in [0, 1].

    Args:
        heatmap: (H, W) float array, any range (min-max normalised first, so the minimum carries no mass).
        boxes: ground-truth (x, y, w, h) boxes in the heatmap's pixels.

    A constant heatmap counts as uniform: the result is the box-union mask's share of the H * W pixels.
    """
    norm, constant = _normalise(heatmap)
    mask = box_mask(boxes, norm.shape)
    if constant:
        return float(mask.mean())
    return float(norm[mask].sum() / norm.sum())


def mask_iou(heatmap: np.ndarray, boxes: Sequence[Box], threshold: float = 0.5) -> float:
    """IoU of the thresholded heatmap (normalised >= ``threshold``) with the box-union mask, both (H, W).

    0 when both masks are empty; 0 for a constant heatmap (its thresholded mask is empty).
    """
    pred = _thresholded(heatmap, threshold)
    gt = box_mask(boxes, pred.shape)
    union = int(np.count_nonzero(pred | gt))
    return float(np.count_nonzero(pred & gt) / union) if union else 0.0


def localization_scores(heatmap: np.ndarray, boxes: Sequence[Box], threshold: float = 0.5) -> dict[str, float]:
    """All localization scores of one heatmap against its ground-truth boxes.

    Args:
        heatmap: (H, W) float array, any range.
        boxes: ground-truth (x, y, w, h) boxes in the heatmap's pixels; at least one with positive area.
        threshold: threshold on the normalised heatmap for the predicted boxes and the mask IoU.

    Returns:
        ``{"pointing": in [0, 1] (:func:`pointing_score`; 0 or 1 but for exact ties), "energy": ...,
        "mask_iou": ..., "max_box_iou": best IoU of any predicted box with any ground-truth box (0 when no box
        is predicted), "tiou@0.1": 0.0 | 1.0, ..., "tiou@0.7"}``,
        all plain floats; ``tiou@t`` is 1 when ``max_box_iou >= t``.

    Raises:
        ValueError: no ground-truth box with positive area (localization is undefined for such an image).
    """
    gt_boxes: list[Box] = [(float(x), float(y), float(w), float(h)) for x, y, w, h in _valid_boxes(boxes)]
    if not gt_boxes:
        raise ValueError("localization_scores needs at least one ground-truth box with positive width and height")
    pred = heatmap_boxes(heatmap, threshold)
    best = max((box_iou(p, g) for p in pred for g in gt_boxes), default=0.0)
    out: dict[str, float] = {
        "pointing": pointing_score(heatmap, gt_boxes),
        "energy": energy_inside(heatmap, gt_boxes),
        "mask_iou": mask_iou(heatmap, gt_boxes, threshold),
        "max_box_iou": float(best),
    }
    for t in IOU_THRESHOLDS:
        out[_tiou_key(t)] = float(best >= t)
    return out


def _mean_dict(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """``{"n": len(rows), key: mean over the rows holding key}`` (NaN values skipped; NaN if none left)."""
    out: dict[str, float] = {"n": len(rows)}
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    for k in keys:
        vals = np.asarray([float(r[k]) for r in rows if k in r], dtype=np.float64)
        vals = vals[~np.isnan(vals)]
        out[k] = float(vals.mean()) if len(vals) else float("nan")
    return out


def summarize_localization(scores: Sequence[dict[str, float]], labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Average per-image scores (from :func:`localization_scores`), overall and per label.

    Args:
        scores: N per-image score dicts.
        labels: optional N class names (e.g. the finding each box annotates), aligned with ``scores``.

    Returns:
        ``{"overall": {"n": N, key: mean, ...}, "per_label": {label: {"n": n_label, key: mean, ...}}}``;
        ``per_label`` is empty when ``labels`` is None and is sorted by label. Means are plain floats over
        the images that hold the key (NaNs skipped); ``n`` is an int. An empty ``scores`` gives
        ``{"overall": {"n": 0}, "per_label": {}}``.

    Raises:
        ValueError: ``labels`` and ``scores`` differ in length.
    """
    if labels is not None and len(labels) != len(scores):
        raise ValueError(f"{len(labels)} labels for {len(scores)} score dicts")
    out: dict[str, Any] = {"overall": _mean_dict(scores), "per_label": {}}
    if labels is not None:
        groups: dict[str, list[dict[str, float]]] = {}
        for s, lab in zip(scores, labels, strict=True):
            groups.setdefault(str(lab), []).append(s)
        out["per_label"] = {lab: _mean_dict(groups[lab]) for lab in sorted(groups)}
    return out


class LabelledBox(Protocol):
    """A box with an optional finding name (e.g. :class:`deeppneumonia.data.manifest.Box`)."""

    @property
    def x(self) -> float: ...
    @property
    def y(self) -> float: ...
    @property
    def w(self) -> float: ...
    @property
    def h(self) -> float: ...
    @property
    def label(self) -> str | None: ...


def boxes_by_class(boxes: Sequence[LabelledBox], target: Sequence[float], classes: Sequence[str],
                   multilabel: bool) -> list[tuple[int, list[Box]]]:
    """Which class's map each image's boxes are scored against: ``[(class index, boxes), ...]``.

    Args:
        boxes: the image's boxes (objects with x, y, w, h and an optional ``label``, e.g. ``data.manifest.Box``).
        target: the image's (C,) target: one-hot (multi-class) or 0/1/NaN per label (multi-label).
        classes: the C class names.
        multilabel: whether the labels are independent findings.

    Returns:
        Multi-class: one entry, the labelled class (argmax of the target) with every box (box labels such as
        SIIM's "opacity" name no class). Multi-label: one entry per finding that has boxes, with only that
        finding's boxes: a box whose ``label`` names a class (case-insensitive) belongs to that class; a box
        whose label names none (or has none) belongs to the image's first positive finding. Sorted by class
        index; empty when there are no boxes (or, multi-label, no box can be attributed to a class).
    """
    xywh = [(float(b.x), float(b.y), float(b.w), float(b.h)) for b in boxes]
    if not xywh:
        return []
    t = np.asarray(target, dtype=np.float64)
    if not multilabel:
        return [(int(np.nanargmax(t)), xywh)]
    index = {c.lower(): k for k, c in enumerate(classes)}
    positives = [k for k in range(len(t)) if t[k] == 1]
    groups: dict[int, list[Box]] = {}
    for b, box in zip(boxes, xywh, strict=True):
        k = index.get((b.label or "").lower())
        if k is None:
            if not positives:
                continue
            k = positives[0]
        groups.setdefault(k, []).append(box)
    return sorted(groups.items())


def patient_bootstrap_mean(values: Sequence[float], patients: Sequence[Hashable], n_boot: int = 2000,
                           seed: int = 0, alpha: float = 0.05) -> dict[str, float]:
    """Mean of per-item values (e.g. paired differences) with a percentile bootstrap CI over patients.

    Patients are resampled with replacement (all their items together), so several images of one patient do
    not count as independent evidence. Returns ``{"mean", "lo", "hi", "n", "patients"}`` (plain floats; NaN
    bounds when fewer than two patients).
    """
    v = np.asarray(values, dtype=np.float64)
    if len(v) != len(patients):
        raise ValueError(f"{len(v)} values for {len(patients)} patient ids")
    if len(v) == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0, "patients": 0}
    _, inverse = np.unique(np.asarray([str(p) for p in patients]), return_inverse=True)
    n_pat = int(inverse.max()) + 1
    sums = np.bincount(inverse, weights=v, minlength=n_pat)
    counts = np.bincount(inverse, minlength=n_pat).astype(np.float64)
    lo = hi = float("nan")
    if n_pat > 1:
        rng = np.random.default_rng(seed)
        draws = rng.integers(0, n_pat, size=(n_boot, n_pat))
        means = sums[draws].sum(1) / counts[draws].sum(1)
        lo, hi = (float(q) for q in np.quantile(means, [alpha / 2, 1 - alpha / 2]))
    return {"mean": float(v.mean()), "lo": lo, "hi": hi, "n": len(v), "patients": n_pat}
