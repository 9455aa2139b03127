"""`deeppneumonia evaluate`: score a saved classifier on a data set and write a run folder.

Writes ``metrics.json`` (image- and study-level metrics with patient-bootstrap 95 % CIs, Grad-CAM
localization against the boxes), ``predictions.csv`` and a self-contained ``report.html``.
Never imports training code: it needs only the checkpoint and the data.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

import deeppneumonia.evaluation.metrics as M
from deeppneumonia.data.batches import CachedSplit
from deeppneumonia.data.cache import build_cache
from deeppneumonia.data.manifest import Box
from deeppneumonia.data.sources import load_source
from deeppneumonia.errors import DataError
from deeppneumonia.evaluation.bootstrap import evaluate_with_ci
from deeppneumonia.evaluation.localization import boxes_by_class, localization_scores, summarize_localization
from deeppneumonia.inference.explain import gradcam, overlay
from deeppneumonia.inference.predictor import Predictor
from deeppneumonia.models.checkpoint import write_json

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """What :func:`evaluate_checkpoint` wrote: the output folder and the metrics (as in its ``metrics.json``)."""

    out_dir: Path
    metrics: dict[str, Any]


def select_split(checkpoint: Path, image_ids: list[str], split: str) -> tuple[np.ndarray, str]:
    """Record indices to score. ``auto``: the run's test part when the checkpoint's run folder has a
    split.json naming these images, else every image. ``test``/``val``/``train`` require that split.json."""
    all_idx = np.arange(len(image_ids))
    if split == "all":
        return all_idx, "all"
    split_file = checkpoint.resolve().parent.parent / "split.json"
    parts = json.loads(split_file.read_text()) if split_file.is_file() else None
    if parts is None:
        if split == "auto":
            return all_idx, "all"
        raise DataError(f"--split {split} needs {split_file} (written by a training run); use --split all")
    part = "test" if split == "auto" else split
    wanted = set(parts.get(part, []))
    idx = np.asarray([i for i, r in enumerate(image_ids) if r in wanted], dtype=np.int64)
    if split == "auto" and idx.size == 0:
        return all_idx, "all"
    if idx.size == 0:
        raise DataError(f"none of the {part} images of {split_file} are in this data set")
    if part == "val" and parts.get("final_fit"):
        log.warning("%s: this run trained on its validation images too (train.final_fit): their scores are not "
                    "held-out estimates", split_file)
        return idx, "val (trained on: final fit)"
    return idx, part


def format_metrics(m: dict[str, Any]) -> str:
    """The headline of an evaluation as a few lines: counts, then image and study metrics with their CIs."""
    keys = ("accuracy", "balanced_accuracy", "macro_f1", "auroc_macro", "map", "ece")
    lines = [f"{m['images']} images of {m['patients']} patients ({m['split']} split)"]
    for level in ("image", "study"):
        if level not in m:
            continue
        ci = m[level].get("ci", {})
        cells = []
        for k in keys:
            v = m[level].get(k)
            if v is None:
                continue
            lo_hi = ci.get(k)
            cells.append(f"{k} {v:.3f}" + (f" [{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]" if lo_hi and lo_hi[0] is not None else ""))
        lines.append(f"{level:>6}: " + ", ".join(cells))
    return "\n".join(lines)


def evaluate_checkpoint(checkpoint: str | Path, data: str | Path, out_dir: str | Path, source: str = "auto",
                        split: str = "auto", cache_dir: str | Path = "~/.cache/deeppneumonia", n_boot: int = 1000,
                        gradcam_layer: str = "layer4", max_cam_images: int = 300, gallery_per_class: int = 3,
                        device: str = "auto", progress: bool = True) -> EvalResult:
    """Score a saved classifier on a data set; write ``metrics.json``, ``predictions.csv`` and ``report.html``.

    Args:
        checkpoint: a ``model.safetensors`` written by training (classes, preprocessing and thresholds inside).
        data: a data folder or CSV in a known layout (``resolve_data_path("sample:kermany")`` for a shipped sample).
        out_dir: output folder (created).
        source: the data layout (``auto`` detects it).
        split: ``auto`` (the run's held-out test patients when the data is the run's, else every image),
            ``test``, ``val``, ``train`` (need the run's ``split.json`` beside the checkpoint's folder) or ``all``.
        cache_dir: the preprocessing cache folder.
        n_boot: bootstrap resamples of patients for the 95 % confidence intervals.
        gradcam_layer: the layer whose Grad-CAM is scored against the boxes and drawn in the gallery.
        max_cam_images: at most this many boxed images get a Grad-CAM localization score.
        gallery_per_class: correct and wrong examples per class in the report's gallery.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        progress: show progress bars.

    Returns:
        An :class:`EvalResult`: ``out_dir`` and ``metrics`` (the dict written to ``metrics.json``: ``image`` and
        ``study`` metrics with ``ci``, ``split``, ``images``, ``patients``, ``localization_gradcam``, ...).
        Without the ``explain`` extra the metrics and report are still written, without Grad-CAM and figures
        (``metrics["missing_extra"]`` says what to install).

    Raises:
        DataError: the data's classes differ from the model's, or the asked split is not available.
    """
    checkpoint, out = Path(checkpoint), Path(out_dir)
    if n_boot < 0:
        raise DataError(f"n_boot={n_boot}: the number of bootstrap resamples must be >= 0 (0 = no intervals)")
    pred = Predictor.from_checkpoint(checkpoint, device)
    manifest = load_source(data, source, classes=pred.classes)  # a CSV is read in the model's class order
    if tuple(manifest.classes) != tuple(pred.classes):
        raise DataError(f"{data}: the data's classes {list(manifest.classes)} differ from the model's {pred.classes}")
    foreign = [p for p in manifest.problems if p.kind == "unknown_label"]
    if foreign and not manifest.records:
        data_classes = list(load_source(data, source).classes)
        raise DataError(f"{data}: the data's labels {data_classes} differ from the model's classes {pred.classes} "
                        f"(every row has a label the model does not know; first: {foreign[0]})")
    if foreign:
        log.warning("%s: %d row(s) have a label outside the model's classes %s and are left out (first: %s)",
                    data, len(foreign), pred.classes, foreign[0])
    if not manifest.records:
        shown = "; ".join(str(p) for p in manifest.problems[:3])
        raise DataError(f"{data}: no usable image to evaluate ({len(manifest.problems)} problem(s): {shown})")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{out}: cannot create the output folder: {exc}") from exc
    idx, part = select_split(checkpoint, [r.image_id for r in manifest.records], split)
    cache = build_cache(manifest, pred.pre.size, cache_dir, pred.pre.resize, progress=progress)
    subset = CachedSplit(cache, idx)
    probs_l, batches = [], []
    for batch in subset.iterate(64):
        probs_l.append(pred.probabilities(pred.preprocess_uint8(batch.images)))
        batches.append(batch.index.numpy())
    probs = np.concatenate(probs_l) if probs_l else np.zeros((0, len(pred.classes)))
    order = np.concatenate(batches) if batches else np.zeros(0, np.int64)
    recs = [manifest.records[int(i)] for i in order]
    targets = np.asarray([r.target for r in recs], dtype=np.float64)
    studies: list[str] | None = [r.study_id for r in recs]
    try:
        M.aggregate_by_group(probs, targets, studies or [], multilabel=pred.multilabel)
    except ValueError as exc:
        log.warning("no study-level metrics: %s", exc)
        studies = None
    result = evaluate_with_ci(probs, targets, pred.classes, [r.patient_id for r in recs], studies,
                                multilabel=pred.multilabel, n_boot=n_boot)
    result.update({"checkpoint": str(checkpoint), "data": str(data), "split": part, "images": len(recs),
                   "patients": len({r.patient_id for r in recs}), "skipped_problems": len(manifest.problems)})
    from deeppneumonia.extras import MissingExtraError, require

    try:
        require("pytorch_grad_cam", "matplotlib")
    except MissingExtraError as exc:  # metrics and report still written: no Grad-CAM, no gallery, said so
        log.warning("no Grad-CAM localization or gallery: %s", exc)
        result["missing_extra"] = str(exc)
        loc: dict[str, Any] = {}
        gallery: list[tuple[str, Any]] = []
    else:
        loc, gallery = _explain(pred, cache, order, probs, targets, gradcam_layer, max_cam_images, gallery_per_class)
    result["localization_gradcam"] = loc
    heads_path = checkpoint.parent / "mgacr_heads.safetensors"
    if heads_path.is_file():
        result["localization_mgacr"] = _score_attention(pred, heads_path, cache, order, max_cam_images)
    if (checkpoint.parent / "iam_rounds.safetensors").is_file():
        result["localization_iam"] = _score_iam(pred, checkpoint, cache, order, targets, max_cam_images)
    # --- issue 18: reference rows (centre prior, oracle at each map's grid) and the box-occlusion test ------------
    result.update(_references_and_occlusion(pred, cache, order, gradcam_layer, result, max_cam_images, n_boot))
    # ---------------------------------------------------------------------------------------------------------------
    write_json(out / "metrics.json", result)
    _write_predictions(out / "predictions.csv", recs, probs, pred)
    from deeppneumonia.evaluation.report import write_report

    run_dir = checkpoint.resolve().parent.parent
    write_report(out / "report.html", result, pred, probs, targets, gallery, run_dir)
    for name, pic in gallery:
        pic.save(out / f"{name}.png")
    log.info("evaluation written to %s", out)
    return EvalResult(out, result)


def _write_predictions(path: Path, recs: list[Any], probs: np.ndarray, pred: Predictor) -> None:
    """Write ``predictions.csv``: ids, one probability column per class, true labels and predicted labels."""
    labels = pred.labels(probs)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_id", "patient_id", "study_id", *[f"p_{c}" for c in pred.classes], "label", "prediction"])
        for r, p, lab in zip(recs, probs, labels, strict=True):
            truth = [c for c, t in zip(pred.classes, r.target, strict=True) if t == 1]
            w.writerow([r.image_id, r.patient_id, r.study_id, *[f"{v:.5f}" for v in p], "|".join(truth), "|".join(lab)])


def _score_attention(pred: Predictor, heads_path: Path, cache: Any, order: np.ndarray,
                     max_images: int) -> dict[str, Any]:
    """Localization of MGACR's map+ per layer (heads kept for analysis with train.keep_attention_heads)."""
    from deeppneumonia.evaluation.attention_maps import load_mgacr_heads, mgacr_heatmaps

    loaded = load_mgacr_heads(heads_path, pred.rt.device)
    if loaded is None:
        return {}
    heads, _ = loaded
    layers = list(heads.layers)  # type: ignore[arg-type]
    boxed = [k for k, i in enumerate(order) if cache.manifest.records[int(i)].boxes][:max_images]
    scores: dict[int, list[dict[str, float]]] = {layer: [] for layer in layers}
    for start in range(0, len(boxed), 32):
        ks = boxed[start:start + 32]
        x = pred.preprocess_uint8(torch.from_numpy(np.stack([cache.images[int(order[k])] for k in ks]))[:, None])
        for layer in layers:
            for k, heat in zip(ks, mgacr_heatmaps(heads, pred.model, x, layer), strict=True):
                boxes = [(b.x, b.y, b.w, b.h) for b in cache.boxes(int(order[k]))]
                scores[layer].append(localization_scores(heat, boxes))
    return {f"layer{layer}": summarize_localization(v) for layer, v in scores.items() if v}


def _references_and_occlusion(pred: Predictor, cache: Any, order: np.ndarray, layer: str, result: dict[str, Any],
                              max_images: int, n_boot: int) -> dict[str, Any]:
    """``localization_references`` (centre prior and the oracle at the grid of Grad-CAM at ``layer`` and of each
    MGACR map+ scored) and ``occlusion`` (box-occlusion test + ROAD, ``evaluation/occlusion.py``) on the boxed
    images; {} when none has boxes."""
    from deeppneumonia.evaluation.occlusion import occlusion_report
    from deeppneumonia.evaluation.references import STRIDES, cache_reference_scores, feature_grid

    if not any(cache.boxes(int(i)) for i in order):
        return {}
    names = [layer] if layer in STRIDES else []
    names += [name for name in result.get("localization_mgacr", {}) if name in STRIDES]
    grids = sorted({feature_grid(pred.pre.size, name) for name in names}, reverse=True)
    refs = cache_reference_scores(cache, order.tolist(), pred.classes, pred.multilabel, grids, max_images)
    road = 0 if "missing_extra" in result else 64  # ROAD needs pytorch-grad-cam (the explain extra)
    occ = occlusion_report(pred, cache, order.tolist(), max_images=max_images, road_images=road,
                           road_layer=layer if layer in STRIDES else "layer4", n_boot=max(n_boot, 200))
    occ.pop("per_image", None)
    return {"localization_references": refs, "occlusion": occ}


def _boxed_localization(pred: Predictor, cache: Any, order: np.ndarray, targets: np.ndarray, max_images: int,
                        heatmaps: Callable[[Tensor, list[int]], Any]) -> dict[str, Any]:
    """Score ``heatmaps(x, classes)`` of the true class against the boxes on (up to ``max_images``) boxed images."""
    boxed = [k for k, i in enumerate(order) if cache.manifest.records[int(i)].boxes][:max_images]
    # one item per (image, class with boxes): multi-label images are scored per finding against its own boxes
    items = [(k, c, b) for k in boxed
             for c, b in boxes_by_class(cache.boxes(int(order[k])), targets[k], pred.classes, pred.multilabel)]
    scores, labels = [], []
    for start in range(0, len(items), 32):
        chunk = items[start:start + 32]
        x = pred.preprocess_uint8(torch.from_numpy(np.stack([cache.images[int(order[k])] for k, _, _ in chunk]))[:, None])
        for (_, c, b), heat in zip(chunk, heatmaps(x, [c for _, c, _ in chunk]), strict=True):
            scores.append(localization_scores(heat, b))
            labels.append(pred.classes[c])
    return summarize_localization(scores, labels) if scores else {}


def _score_iam(pred: Predictor, checkpoint: Path, cache: Any, order: np.ndarray, targets: np.ndarray,
               max_images: int) -> dict[str, Any]:
    """Localization of the IAM map (aggregate of the CAMs of every round's network, ``evaluation/iam_maps.py``)."""
    from deeppneumonia.evaluation.iam_maps import iam_heatmaps, load_round_networks

    rounds, meta = load_round_networks(checkpoint, pred.rt.device)
    out = _boxed_localization(pred, cache, order, targets, max_images, lambda x, cls: iam_heatmaps(
        [*rounds, pred.model], x, cls, meta.get("heatmap", "cam"), meta.get("aggregate", "max")))
    out["rounds"] = len(rounds) + 1
    return out


def _explain(pred: Predictor, cache: Any, order: np.ndarray, probs: np.ndarray, targets: np.ndarray, layer: str,
             max_images: int, per_class: int) -> tuple[dict[str, Any], list[tuple[str, Any]]]:
    """Grad-CAM of the true class on boxed images, scored against the boxes; and a gallery of cases."""
    loc = _boxed_localization(pred, cache, order, targets, max_images, lambda x, cls: gradcam(pred.model, x, cls, layer))
    gallery: list[tuple[str, Any]] = []
    if len(order):
        truth = targets.argmax(1) if not pred.multilabel else np.nan_to_num(targets).argmax(1)
        guess = probs.argmax(1)
        for c, name in enumerate(pred.classes):
            for kind, sel in (("correct", (truth == c) & (guess == c)), ("wrong", (truth == c) & (guess != c))):
                picks = np.flatnonzero(sel)[:per_class]
                if picks.size == 0:
                    continue
                x = pred.preprocess_uint8(torch.from_numpy(np.stack([cache.images[int(order[k])] for k in picks]))[:, None])
                maps = gradcam(pred.model, x, [int(guess[k]) for k in picks], layer)
                for n, (k, heat) in enumerate(zip(picks, maps, strict=True)):
                    rec_i = int(order[k])
                    caption = f"true {name[:16]} | pred {pred.classes[int(guess[k])][:16]} {probs[k].max():.2f}"
                    pic = overlay(cache.images[rec_i], heat, cache.boxes(rec_i), caption=caption)
                    safe = "".join(ch if ch.isalnum() else "_" for ch in name)
                    gallery.append((f"gallery_{safe}_{kind}_{n}", pic))
    return loc, gallery


__all__ = ["Box", "EvalResult", "evaluate_checkpoint", "select_split"]
