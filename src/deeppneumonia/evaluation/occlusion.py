"""Does the model look at the lesion? A box-occlusion test, and pytorch-grad-cam's ROAD score (issue 18).

**Box occlusion.** For each test image with lesion boxes and its true class c (multi-label: every finding with
boxes, matched as in :func:`deeppneumonia.evaluation.localization.boxes_by_class`):

    drop_lesion  = p_c(x) - p_c(x with the lesion boxes filled)
    drop_outside = p_c(x) - p_c(x with the same box shapes filled elsewhere)
    difference   = drop_lesion - drop_outside          (paired: the same image, the same filled area)

The control boxes have the lesion boxes' sizes, are placed uniformly at random at integer positions inside the
image so that they overlap neither a lesion box nor each other (:func:`control_boxes`, seeded per image), so the
two fills hide the same amount of image. Fill (``fill``): ``mean`` (default) = the image's own mean value (in
the network's input space), ``blur`` = the image blurred with a Gaussian of sigma = ``blur_sigma`` x the image
side (default 1/16), so the grey level is kept and only the structure is removed. An image whose boxes leave no
room for a control placement (lesions covering most of the image) is skipped and counted (``skipped``).
A model that uses the lesions loses more when they are hidden: a positive mean difference. The mean is
reported with a 95 % percentile-bootstrap CI over **patients**
(:func:`deeppneumonia.evaluation.localization.patient_bootstrap_mean`). Probabilities are softmax (multi-class)
or sigmoid (multi-label).

**ROAD** (Rong et al. 2022, "A consistent and efficient evaluation strategy for attribution methods";
``pytorch_grad_cam.metrics.road.ROADCombined``): box-free. The pixels ranked most (MoRF) or least (LeRF) relevant
by the heatmap are removed with a noisy linear imputation at several percentiles, and the score is
``(change_LeRF - change_MoRF) / 2`` of the class probability, averaged over the percentiles: higher means the
heatmap ranks pixels by what the model uses. It solves one sparse system per image and percentile, so it runs
on at most ``max_images`` images with ``percentiles`` (default 20, 50, 80); the imputation noise is seeded.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from deeppneumonia.evaluation.localization import Box, box_mask, patient_bootstrap_mean
from deeppneumonia.transforms.filters import gaussian_blur

ProbFn = Callable[[Tensor], np.ndarray]  # (B, 1, H, W) network input -> (B, C) probabilities
ROAD_PERCENTILES: tuple[int, ...] = (20, 50, 80)


def _int_box(box: Box, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x, y, w, h) rounded to whole pixels and clipped to the image (at least 1 x 1)."""
    h_img, w_img = shape
    x0, y0 = max(0, round(box[0])), max(0, round(box[1]))
    x1, y1 = min(w_img, round(box[0] + box[2])), min(h_img, round(box[1] + box[3]))
    return x0, y0, max(1, x1 - x0), max(1, y1 - y0)


def control_boxes(boxes: Sequence[Box], shape: tuple[int, int], rng: np.random.Generator) -> list[Box] | None:
    """Boxes of the same sizes as ``boxes``, at random places not overlapping them (nor each other).

    Args:
        boxes: lesion boxes (x, y, w, h) in the image's pixels (boxes with w or h <= 0 are ignored).
        shape: (H, W) of the image.
        rng: the random source (seed it per image for a reproducible test).

    Returns:
        One integer-aligned box per lesion box (its size rounded to whole pixels and clipped to the image),
        placed uniformly among the positions where it lies inside the image and touches no pixel of the lesion
        boxes' mask (:func:`box_mask`) nor of the control boxes placed before it; None when some box has no
        such position.
    """
    h_img, w_img = int(shape[0]), int(shape[1])
    valid = [b for b in boxes if b[2] > 0 and b[3] > 0]
    forbidden = box_mask(valid, (h_img, w_img)).astype(np.int64)
    out: list[Box] = []
    for b in valid:
        _, _, bw, bh = _int_box(b, (h_img, w_img))
        integral = np.pad(forbidden.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        # blocked[y, x] = forbidden pixels inside the window [y, y + bh) x [x, x + bw)
        blocked = integral[bh:, bw:] - integral[:-bh, bw:] - integral[bh:, :-bw] + integral[:-bh, :-bw]
        ys, xs = np.nonzero(blocked == 0)
        if len(ys) == 0:
            return None
        k = int(rng.integers(len(ys)))
        x, y = int(xs[k]), int(ys[k])
        out.append((float(x), float(y), float(bw), float(bh)))
        forbidden[y:y + bh, x:x + bw] = 1
    return out


def fill_regions(x: Tensor, masks: Tensor, fill: str = "mean", blur_sigma: float = 1 / 16) -> Tensor:
    """``x`` (B, 1, H, W) with the pixels where ``masks`` (B, H, W) bool is True replaced by the fill.

    ``mean``: each image's own mean value; ``blur``: the image blurred with sigma = ``blur_sigma`` x max(H, W).
    """
    if fill == "mean":
        source = x.mean((1, 2, 3), keepdim=True).expand_as(x)
    elif fill == "blur":
        source = gaussian_blur(x, max(1.0, blur_sigma * max(x.shape[-2:])))
    else:
        raise ValueError(f"unknown fill {fill!r}; choose mean or blur")
    m = masks[:, None].to(x.device)
    return torch.where(m, source, x)


def occlusion_drops(probs: ProbFn, x: Tensor, items: Sequence[tuple[int, Sequence[Box]]], seeds: Sequence[int],
                    fill: str = "mean") -> list[dict[str, float]]:
    """Per item: the class probability on the image, with its lesion boxes filled, with control boxes filled.

    Args:
        probs: the model, (B, 1, H, W) input -> (B, C) probabilities.
        x: (B, 1, H, W) network inputs, one per item.
        items: per image, (class index, its lesion boxes in the input's pixels).
        seeds: per image, the seed of its control placement.
        fill: ``mean`` or ``blur`` (:func:`fill_regions`).

    Returns:
        Per image ``{"p", "p_lesion", "p_outside", "drop_lesion", "drop_outside", "difference", "area"}`` (area:
        the share of the image filled) or ``{"skipped": 1.0}`` when no control placement exists.
    """
    shape = (int(x.shape[-2]), int(x.shape[-1]))
    lesion, control, keep = [], [], []
    for k, ((_, boxes), seed) in enumerate(zip(items, seeds, strict=True)):
        ctrl = control_boxes(boxes, shape, np.random.default_rng(seed))
        if ctrl is None:
            continue
        keep.append(k)
        lesion_int = [_int_box(b, shape) for b in boxes if b[2] > 0 and b[3] > 0]
        lm = np.zeros(shape, dtype=bool)
        for bx, by, bw, bh in lesion_int:
            lm[by:by + bh, bx:bx + bw] = True
        cm = np.zeros(shape, dtype=bool)
        for cx, cy, cw, ch in ctrl:
            cm[int(cy):int(cy + ch), int(cx):int(cx + cw)] = True
        lesion.append(lm)
        control.append(cm)
    out: list[dict[str, float]] = [{"skipped": 1.0} for _ in items]
    if not keep:
        return out
    xs = x[keep]
    p0 = probs(xs)
    p_les = probs(fill_regions(xs, torch.from_numpy(np.stack(lesion)), fill))
    p_out = probs(fill_regions(xs, torch.from_numpy(np.stack(control)), fill))
    for j, k in enumerate(keep):
        c = int(items[k][0])
        a, b, d = float(p0[j, c]), float(p_les[j, c]), float(p_out[j, c])
        out[k] = {"p": a, "p_lesion": b, "p_outside": d, "drop_lesion": a - b, "drop_outside": a - d,
                  "difference": (a - b) - (a - d), "area": float(lesion[j].mean())}
    return out


def summarize_occlusion(rows: Sequence[dict[str, float]], patients: Sequence[Hashable], n_boot: int = 2000,
                        seed: int = 0) -> dict[str, Any]:
    """Means of the per-item drops and the paired difference with patient-bootstrap CIs.

    Returns ``{"n", "skipped", "patients", "drop_lesion": {mean, lo, hi, ...}, "drop_outside": {...},
    "difference": {...}, "lesion_worse_share": share of items with difference > 0, "area": mean filled share,
    "per_image": {"difference": [...], "patient": [...]}}``.
    """
    used = [(r, p) for r, p in zip(rows, patients, strict=True) if "skipped" not in r]
    pats = [p for _, p in used]
    out: dict[str, Any] = {"n": len(used), "skipped": len(rows) - len(used), "patients": len({str(p) for p in pats})}
    for key in ("drop_lesion", "drop_outside", "difference"):
        out[key] = patient_bootstrap_mean([r[key] for r, _ in used], pats, n_boot, seed)
    diffs = np.asarray([r["difference"] for r, _ in used], dtype=np.float64)
    out["lesion_worse_share"] = float((diffs > 0).mean()) if len(diffs) else float("nan")
    out["area"] = float(np.mean([r["area"] for r, _ in used])) if used else float("nan")
    out["per_image"] = {"difference": diffs.tolist(), "patient": [str(p) for p in pats]}
    return out


def paired_model_difference(a: dict[str, Any], b: dict[str, Any], n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean over the images both models scored of (a's difference - b's difference), patient-bootstrap CI.

    ``a`` and ``b`` are :func:`summarize_occlusion` results on the same images in the same order (images are
    matched by position among the non-skipped ones: the control placement depends on the boxes only, so both
    models skip the same images).
    """
    da, db = a["per_image"]["difference"], b["per_image"]["difference"]
    if len(da) != len(db) or a["per_image"]["patient"] != b["per_image"]["patient"]:
        raise ValueError("the two occlusion results are not on the same images")
    return patient_bootstrap_mean([x - y for x, y in zip(da, db, strict=True)], a["per_image"]["patient"], n_boot, seed)


class _ProbTarget:
    """pytorch-grad-cam target: the softmax (or sigmoid) probability of one class of a (C,) output."""

    def __init__(self, category: int, multilabel: bool) -> None:
        self.category, self.multilabel = category, multilabel

    def __call__(self, output: Tensor) -> Tensor:
        """The target class's probability of ``output`` (sigmoid if multi-label, else softmax)."""
        if self.multilabel:
            return torch.sigmoid(output[..., self.category])
        return torch.softmax(output, -1)[..., self.category]


def road_scores(model: torch.nn.Module, x: Tensor, heatmaps: np.ndarray, classes: Sequence[int], multilabel: bool,
                percentiles: Sequence[int] = ROAD_PERCENTILES, seed: int = 0) -> list[float]:
    """ROADCombined score per image (higher: the heatmap ranks pixels by what the model uses); see the module doc.

    Args:
        model: the classifier, ``forward(x) -> logits`` (put in eval mode here).
        x: (B, 1, H, W) network inputs.
        heatmaps: (B, H, W) the heatmaps to judge (any non-negative scale).
        classes: per image, the class whose probability is followed.
        multilabel: sigmoid instead of softmax probabilities.
        percentiles: the removal percentiles averaged over.
        seed: seeds the imputation noise (the global torch generator is restored afterwards).
    """
    from pytorch_grad_cam.metrics.road import ROADCombined

    was = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            metric = ROADCombined(percentiles=list(percentiles))
            targets = [_ProbTarget(int(c), multilabel) for c in classes]
            scores = metric(x, np.asarray(heatmaps, dtype=np.float32), targets, model)
    finally:
        model.train(was)
    return [float(s) for s in np.asarray(scores, dtype=np.float64).reshape(-1)]


def occlusion_report(pred: Any, cache: Any, indices: Sequence[int], fill: str = "mean", seed: int = 0,
                     max_images: int | None = None, road_images: int = 64, road_layer: str = "layer4",
                     n_boot: int = 2000, batch_size: int = 32) -> dict[str, Any]:
    """The occlusion test and ROAD of one model (a :class:`~deeppneumonia.inference.predictor.Predictor`) on the
    boxed images among ``indices`` of ``cache`` (a :class:`~deeppneumonia.data.cache.Cache`).

    Items are (image, class with boxes) pairs (:func:`~deeppneumonia.evaluation.localization.boxes_by_class`), in
    the order of ``indices``, at most ``max_images`` images; each image's control placement is seeded by
    ``seed`` and its image id (so every model sees the same control boxes). ROAD uses the Grad-CAM of the same
    class at ``road_layer`` on the first ``road_images`` of those images (0: no ROAD).

    Returns:
        :func:`summarize_occlusion`'s dict plus ``"fill"``, ``"seed"``, ``"image_ids"`` (of the scored items) and
        ``"road": {"n", "mean", "lo", "hi", "percentiles", "layer"}``.
    """
    import zlib

    from deeppneumonia.evaluation.localization import boxes_by_class
    from deeppneumonia.inference.explain import gradcam

    records = cache.manifest.records
    boxed = [int(i) for i in indices if cache.boxes(int(i))]
    if max_images is not None:
        boxed = boxed[:max_images]
    rows: list[dict[str, float]] = []
    patients: list[str] = []
    ids: list[str] = []
    road: list[float] = []
    road_patients: list[str] = []
    for start in range(0, len(boxed), batch_size):
        chunk = boxed[start:start + batch_size]
        images, items, seeds, pats, names = [], [], [], [], []
        for i in chunk:
            rec = records[i]
            for c, boxes in boxes_by_class(cache.boxes(i), rec.target, pred.classes, pred.multilabel):
                images.append(cache.images[i])
                items.append((c, boxes))
                seeds.append(seed * 1_000_003 + zlib.crc32(str(rec.image_id).encode()))
                pats.append(str(rec.patient_id))
                names.append(str(rec.image_id))
        if not items:
            continue
        x = pred.preprocess_uint8(torch.from_numpy(np.stack(images))[:, None])
        rows += occlusion_drops(pred.probabilities, x, items, seeds, fill)
        patients += pats
        ids += names
        room = road_images - len(road)
        if room > 0:
            sub = slice(0, room)
            cls = [c for c, _ in items[sub]]
            heat = gradcam(pred.model, x[sub], cls, road_layer)
            road += road_scores(pred.model, x[sub], heat, cls, pred.multilabel, seed=seed)
            road_patients += pats[sub]
    out = summarize_occlusion(rows, patients, n_boot, seed)
    out.update({"fill": fill, "seed": seed, "image_ids": [n for n, r in zip(ids, rows, strict=True) if "skipped" not in r]})
    r = patient_bootstrap_mean(road, road_patients, n_boot, seed)
    out["road"] = {**r, "percentiles": list(ROAD_PERCENTILES), "layer": road_layer, "heatmap": "Grad-CAM"}
    return out
