"""Curves behind the report's figures: ROC and precision-recall per class, and the reliability diagram."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_curve

from deeppneumonia.evaluation.metrics import ECE_BINS, _bin_stats, _calibration_inputs, _ovr_truth, as_arrays

MAX_CURVE_POINTS = 200
"""Most points kept per ROC / PR curve by :func:`curves`."""


def _downsample(a: np.ndarray, b: np.ndarray, max_points: int) -> tuple[list[float], list[float]]:
    """At most ``max_points`` evenly spaced points of two (L,) arrays, first and last always kept."""
    if a.size > max_points:
        idx = np.unique(np.linspace(0, a.size - 1, max_points).round().astype(np.int64))
        a, b = a[idx], b[idx]
    return [float(x) for x in a], [float(x) for x in b]


def curves(probs: np.ndarray, targets: np.ndarray, classes: Sequence[str],
           max_points: int = MAX_CURVE_POINTS) -> dict[str, dict[str, list[float]]]:
    """Per-class one-vs-rest ROC and precision-recall curves for plotting (NaN targets masked).

    Args:
        probs: (N, C). targets: (N, C), one-hot or 0 / 1 / NaN. classes: C names.
        max_points: most points per curve (evenly spaced subsample).

    Returns:
        ``{class: {"fpr", "tpr", "precision", "recall"}}``, lists of <= ``max_points`` floats; all empty for a class
        without both (known) positives and negatives.
    """
    p, t = as_arrays(probs, targets)
    if len(classes) != p.shape[1]:
        raise ValueError(f"{len(classes)} class names for {p.shape[1]} probability columns")
    truth, known = _ovr_truth(t)
    out: dict[str, dict[str, list[float]]] = {}
    for k, name in enumerate(classes):
        m = known[:, k]
        y = truth[m, k]
        if not 0 < y.sum() < y.size:
            out[name] = {"fpr": [], "tpr": [], "precision": [], "recall": []}
            continue
        fpr, tpr, _ = roc_curve(y, p[m, k])
        precision, recall, _ = precision_recall_curve(y, p[m, k])
        fpr_l, tpr_l = _downsample(fpr, tpr, max_points)
        prec_l, rec_l = _downsample(precision, recall, max_points)
        out[name] = {"fpr": fpr_l, "tpr": tpr_l, "precision": prec_l, "recall": rec_l}
    return out


def reliability(probs: np.ndarray, targets: np.ndarray, multilabel: bool = False,
                n_bins: int = ECE_BINS) -> dict[str, list[float | None]]:
    """Reliability-diagram data, with the binning of the ECE of :func:`classification_metrics`.

    Args:
        probs: (N, C). targets: (N, C), one-hot (multiclass) or 0 / 1 / NaN (multilabel).
        multilabel: binary calibration over the known (image, class) pairs instead of max-probability calibration.
        n_bins: equal-width bins on [0, 1].

    Returns:
        ``centres``, ``accuracy`` (fraction correct, or of positives when multilabel), ``confidence`` (mean
        predicted probability) and ``count``: lists of length ``n_bins``; accuracy / confidence None for empty bins.
    """
    p, t = as_arrays(probs, targets)
    conf, outcome = _calibration_inputs(p, t, multilabel)
    count, out_sum, conf_sum = _bin_stats(conf, outcome, n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    safe = np.maximum(count, 1)
    return {"centres": [float(x) for x in (edges[:-1] + edges[1:]) / 2],
            "accuracy": [float(a) if n else None for a, n in zip(out_sum / safe, count, strict=True)],
            "confidence": [float(c) if n else None for c, n in zip(conf_sum / safe, count, strict=True)],
            "count": [int(n) for n in count]}
