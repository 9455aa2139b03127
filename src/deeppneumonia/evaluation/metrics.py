"""Metric maths of the evaluation: numpy arrays in, plain JSON-serialisable dicts out (no model code here).

The per-class scores come from :mod:`deeppneumonia.evaluation.scores` (numpy, tested equal to scikit-learn's).
Two target layouts are supported:

* multiclass: ``probs`` (N, C) softmax probabilities, ``targets`` (N, C) one-hot (float); prediction = argmax.
* multilabel: ``probs`` (N, C) sigmoid probabilities, ``targets`` (N, C) with 1 / 0 and NaN = unknown; an unknown
  (image, class) pair is masked for that class and never counted. Prediction per class = ``probs >= threshold``.

Metrics that are undefined (e.g. AUROC of a class without positives or without negatives in the targets) are
``None`` in every dict this module returns, so ``json.dumps(..., allow_nan=False)`` works on them. The two
lower-level helpers meant for numeric work, the function of :func:`scalar_metrics` and
:func:`~deeppneumonia.evaluation.bootstrap.bootstrap_ci` (patient-bootstrap intervals, in their own module), use
NaN instead (they return floats).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import numpy as np

from deeppneumonia.evaluation.scores import confusion, multiclass_counts, ovr_auroc_ap, prf_from_counts

ECE_BINS = 15
"""Equal-width confidence bins of the expected calibration error (Guo et al., 2017)."""

MetricFn = Callable[[np.ndarray, np.ndarray], dict[str, float]]
"""(probs (N, C), targets (N, C)) -> flat dict of float metrics (NaN or None where undefined)."""

NAN = float("nan")


# ----------------------------------------------------------------------------------------------------------------
# input checks and small helpers
# ----------------------------------------------------------------------------------------------------------------
def as_arrays(probs: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both as float64 (N, C) arrays of the same shape; probabilities finite."""
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64)
    if p.ndim != 2 or p.shape != t.shape:
        raise ValueError(f"probs and targets must both be (N, C) arrays of the same shape, got {p.shape} and {t.shape}")
    if not np.isfinite(p).all():
        raise ValueError("probs contain NaN or infinite values")
    return p, t


def _multiclass_labels(t: np.ndarray) -> np.ndarray:
    """(N,) int class indices from (N, C) one-hot targets (rows must be complete distributions, no NaN)."""
    if np.isnan(t).any():
        raise ValueError("multiclass targets must not contain NaN (unknown labels exist only in multilabel mode)")
    if t.shape[0] and (not np.allclose(t.sum(axis=1), 1.0, atol=1e-6) or (t < 0).any()):
        raise ValueError("multiclass targets must be one-hot rows (non-negative, summing to 1)")
    return t.argmax(axis=1)


def _multilabel_truth(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(truth, known), both (N, C) bool, from (N, C) multilabel targets holding 0, 1 or NaN."""
    known = ~np.isnan(t)
    if not np.isin(t[known], (0.0, 1.0)).all():
        raise ValueError("multilabel targets must be 0, 1 or NaN (unknown)")
    return t == 1.0, known


def _ovr_truth(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(truth, known), both (N, C) bool, for one-vs-rest use of either layout: positive = target > 0.5, NaN unknown."""
    known = ~np.isnan(t)
    return np.where(known, t, 0.0) > 0.5, known


def _thresholds(thresholds: np.ndarray | None, c: int) -> np.ndarray:
    """(C,) float thresholds; 0.5 for every class when None."""
    if thresholds is None:
        return np.full(c, 0.5)
    thr = np.asarray(thresholds, dtype=np.float64)
    if thr.shape != (c,):
        raise ValueError(f"thresholds must have shape ({c},), got {thr.shape}")
    return thr


def _nanmean(values: np.ndarray) -> float:
    """Mean of the finite entries of a 1-D array; NaN when there is none (and no RuntimeWarning)."""
    ok = np.isfinite(values)
    return float(values[ok].mean()) if ok.any() else NAN


def _none_if_nan(value: float) -> float | None:
    """``value``, or None when it is not finite."""
    return value if math.isfinite(value) else None


def to_jsonable(obj: Any) -> Any:
    """A copy of ``obj`` made of dicts, lists, str, int, float, bool and None only; NaN and +-inf become None.

    numpy scalars become Python numbers, arrays and tuples become lists, dict keys become strings.
    """
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, bool | np.bool_):
        return bool(obj)
    if isinstance(obj, int | np.integer):
        return int(obj)
    if isinstance(obj, float | np.floating):
        return _none_if_nan(float(obj))
    return obj


def first_appearance_codes(keys: Sequence[Hashable]) -> tuple[np.ndarray, list[Any]]:
    """(codes (N,) int, unique keys in first-appearance order) with ``unique[codes[i]] == keys[i]``."""
    index: dict[Any, int] = {}
    codes = np.fromiter((index.setdefault(k, len(index)) for k in keys), dtype=np.int64, count=len(keys))
    return codes, list(index)


# ----------------------------------------------------------------------------------------------------------------
# shared maths
# ----------------------------------------------------------------------------------------------------------------
def _calibration_inputs(p: np.ndarray, t: np.ndarray, multilabel: bool) -> tuple[np.ndarray, np.ndarray]:
    """(confidence (M,), outcome (M,)) for calibration.

    Multiclass: M = N, confidence = max probability, outcome = 1 if the argmax is the true class.
    Multilabel: M = number of known (image, class) pairs, confidence = the class probability, outcome = the target.
    """
    if multilabel:
        truth, known = _multilabel_truth(t)
        return p[known], truth[known].astype(np.float64)
    labels = _multiclass_labels(t)
    return p.max(axis=1), (p.argmax(axis=1) == labels).astype(np.float64)


def _bin_stats(conf: np.ndarray, outcome: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count, outcome sum, confidence sum), each (n_bins,), over equal-width bins ((m-1)/M, m/M] (0 in the first)."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.digitize(conf, edges[1:-1], right=True)
    return (np.bincount(idx, minlength=n_bins), np.bincount(idx, weights=outcome, minlength=n_bins),
            np.bincount(idx, weights=conf, minlength=n_bins))


def _ece(conf: np.ndarray, outcome: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error sum_m |B_m| / n * |acc(B_m) - conf(B_m)| (Guo et al., 2017); NaN when n = 0."""
    if conf.size == 0:
        return NAN
    _, out_sum, conf_sum = _bin_stats(conf, outcome, n_bins)
    return float(np.abs(out_sum - conf_sum).sum() / conf.size)


def _multiclass_scalars(p: np.ndarray, labels: np.ndarray,
                        auroc_ap: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, float]:
    """accuracy, balanced_accuracy, macro_f1 (over all C classes), auroc_macro and map (over defined classes).

    Args:
        p: (N, C). labels: (N,) int. auroc_ap: the per-class (C,) AUROC and AP when already computed.
    """
    c = p.shape[1]
    if labels.size == 0:
        return dict.fromkeys(("accuracy", "balanced_accuracy", "macro_f1", "auroc_macro", "map"), NAN)
    if auroc_ap is None:
        truth = labels[:, None] == np.arange(c)
        auroc_ap = ovr_auroc_ap(p, truth, np.ones_like(truth))
    auroc, ap = auroc_ap
    counts = multiclass_counts(confusion(labels, p.argmax(axis=1), c))
    return {"accuracy": float(counts["accuracy"]), "balanced_accuracy": float(counts["balanced_accuracy"]),
            "macro_f1": float(np.mean(counts["f1"])), "auroc_macro": _nanmean(auroc), "map": _nanmean(ap)}


def _multilabel_prf(p: np.ndarray, truth: np.ndarray, known: np.ndarray,
                    thr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class (precision, recall, f1, support), each (C,); NaN (support 0) for classes with no known target.

    Unknown (image, class) pairs are left out of that class's counts.
    """
    y = truth & known
    pred = (p >= thr) & known
    tp = (y & pred).sum(axis=0)
    support = y.sum(axis=0).astype(np.int64)
    prec, rec, f1 = prf_from_counts(tp, pred.sum(axis=0) - tp, support - tp)
    none_known = ~known.any(axis=0)
    prec, rec, f1 = (np.where(none_known, NAN, a) for a in (prec, rec, f1))
    return prec, rec, f1, support


def _multilabel_scalars(p: np.ndarray, t: np.ndarray, thr: np.ndarray) -> dict[str, float]:
    """auroc_macro, map (over classes with known positives and negatives) and macro_f1 (over classes with known data)."""
    truth, known = _multilabel_truth(t)
    auroc, ap = ovr_auroc_ap(p, truth, known)
    f1 = _multilabel_prf(p, truth, known, thr)[2]
    return {"auroc_macro": _nanmean(auroc), "map": _nanmean(ap), "macro_f1": _nanmean(f1)}


# ----------------------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------------------
def classification_metrics(probs: np.ndarray, targets: np.ndarray, classes: Sequence[str], multilabel: bool = False,
                           thresholds: np.ndarray | None = None) -> dict[str, Any]:
    """All point metrics of a set of predictions, as a JSON-serialisable dict (None where undefined).

    Args:
        probs: (N, C) softmax (multiclass) or sigmoid (multilabel) probabilities.
        targets: (N, C) one-hot (multiclass) or 0 / 1 / NaN = unknown (multilabel).
        classes: C class names, the keys of ``per_class``.
        multilabel: the layout of ``probs`` / ``targets``.
        thresholds: (C,) per-class decision thresholds, multilabel only (default 0.5 each); a multiclass prediction
            is always the argmax and ignores them.

    Returns:
        multiclass: ``accuracy``, ``balanced_accuracy``, ``macro_f1`` (unweighted mean of the C per-class F1),
        ``auroc_macro`` and ``map`` (means of the one-vs-rest AUROC / AP over the classes with both positives and
        negatives), ``ece`` (15 bins on the max probability), ``n`` (N), ``per_class``
        ``{class: {precision, recall, f1, support, auroc, ap}}`` and ``confusion_matrix`` (C x C list, rows = true).
        multilabel: ``macro_f1`` (mean over classes with a known target), ``auroc_macro``, ``map``, ``ece`` (over
        all known (image, class) pairs), ``n``, ``thresholds`` (C,) and ``per_class`` with, in addition,
        ``n_known``. ``support`` is the number of (known) positives of the class.
    """
    p, t = as_arrays(probs, targets)
    c = p.shape[1]
    if len(classes) != c:
        raise ValueError(f"{len(classes)} class names for {c} probability columns")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if multilabel:
            return _multilabel_metrics(p, t, list(classes), _thresholds(thresholds, c))
        return _multiclass_metrics(p, t, list(classes))


def _multiclass_metrics(p: np.ndarray, t: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """:func:`classification_metrics` of a multi-class task: scalars, per-class scores, confusion matrix, ECE."""
    c = p.shape[1]
    labels = _multiclass_labels(t)
    truth = labels[:, None] == np.arange(c)
    auroc, ap = ovr_auroc_ap(p, truth, np.ones_like(truth))
    scal = _multiclass_scalars(p, labels, (auroc, ap))
    if labels.size:
        cm = confusion(labels, p.argmax(axis=1), c)
        counts = multiclass_counts(cm)
        prec, rec, f1, support = (np.asarray(counts[k]) for k in ("precision", "recall", "f1", "support"))
    else:
        prec = rec = f1 = np.full(c, NAN)
        support, cm = np.zeros(c, dtype=np.int64), np.zeros((c, c), dtype=np.int64)
    conf, correct = _calibration_inputs(p, t, multilabel=False)
    out: dict[str, Any] = {**scal, "per_class": {
        name: {"precision": prec[k], "recall": rec[k], "f1": f1[k], "support": int(support[k]),
               "auroc": auroc[k], "ap": ap[k]} for k, name in enumerate(classes)},
        "confusion_matrix": cm, "ece": _ece(conf, correct), "n": int(p.shape[0])}
    result: dict[str, Any] = to_jsonable(out)
    return result


def _multilabel_metrics(p: np.ndarray, t: np.ndarray, classes: list[str], thr: np.ndarray) -> dict[str, Any]:
    """:func:`classification_metrics` of a multi-label task; unknown (NaN) targets are left out per class."""
    truth, known = _multilabel_truth(t)
    auroc, ap = ovr_auroc_ap(p, truth, known)
    prec, rec, f1, support = _multilabel_prf(p, truth, known, thr)
    n_known = known.sum(axis=0)
    conf, outcome = _calibration_inputs(p, t, multilabel=True)
    out: dict[str, Any] = {
        "per_class": {name: {"precision": prec[k], "recall": rec[k], "f1": f1[k], "support": int(support[k]),
                             "auroc": auroc[k], "ap": ap[k], "n_known": int(n_known[k])}
                      for k, name in enumerate(classes)},
        "auroc_macro": _nanmean(auroc), "map": _nanmean(ap), "macro_f1": _nanmean(f1),
        "ece": _ece(conf, outcome), "n": int(p.shape[0]), "thresholds": thr}
    result: dict[str, Any] = to_jsonable(out)
    return result


def aggregate_by_group(probs: np.ndarray, targets: np.ndarray, groups: Sequence[Hashable],
                       multilabel: bool = False) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """Per-group (e.g. per-study) predictions: the mean probability of a group's images.

    Args:
        probs: (N, C) image probabilities. targets: (N, C) image targets. groups: N group ids.
        multilabel: multiclass targets of a group must agree (else ValueError) and the group keeps them; multilabel
            targets are combined with a NaN-ignoring max (a finding seen on any image counts, NaN if never known).

    Returns:
        (probs_g (G, C), targets_g (G, C), group ids (G,) in order of first appearance).
    """
    p, t = as_arrays(probs, targets)
    if len(groups) != p.shape[0]:
        raise ValueError(f"{len(groups)} group ids for {p.shape[0]} rows")
    codes, ids = first_appearance_codes(groups)
    g = len(ids)
    sums = np.zeros((g, p.shape[1]))
    np.add.at(sums, codes, p)
    probs_g = sums / np.maximum(np.bincount(codes, minlength=g), 1)[:, None]
    if multilabel:
        targets_g = np.full((g, t.shape[1]), NAN)
        np.fmax.at(targets_g, codes, t)  # fmax ignores NaN unless both are NaN
        return probs_g, targets_g, ids
    first = np.zeros(g, dtype=np.int64)
    first[codes[::-1]] = np.arange(len(codes))[::-1]  # the last write per group is its first row
    targets_g = t[first]
    same = (t == targets_g[codes]) | (np.isnan(t) & np.isnan(targets_g[codes]))
    bad = np.flatnonzero(~same.all(axis=1))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"group {ids[codes[i]]!r}: row {i} has target {t[i].tolist()} but the group's first row "
                         f"{int(first[codes[i]])} has {targets_g[codes[i]].tolist()}")
    return probs_g, targets_g, ids


def scalar_metrics(multilabel: bool, thresholds: np.ndarray | None = None) -> MetricFn:
    """The function of (probs (N, C), targets (N, C)) giving the flat scalar metrics that get bootstrap CIs.

    multiclass: ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``auroc_macro``, ``map``;
    multilabel: ``auroc_macro``, ``map``, ``macro_f1`` (with ``thresholds`` (C,), default 0.5).
    Same definitions as :func:`classification_metrics`, but floats with NaN where undefined.
    """

    def multiclass_fn(probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        p, t = as_arrays(probs, targets)
        return _multiclass_scalars(p, _multiclass_labels(t))

    def multilabel_fn(probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
        p, t = as_arrays(probs, targets)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return _multilabel_scalars(p, t, _thresholds(thresholds, p.shape[1]))

    return multilabel_fn if multilabel else multiclass_fn


def image_and_study_metrics(probs: np.ndarray, targets: np.ndarray, studies: Sequence[Hashable] | None,
                            multilabel: bool = False) -> dict[str, Any]:
    """Scalar metrics of the images, then (``study_`` prefix) of their studies, the way every table reports them.

    Args:
        probs: (N, C) probabilities. targets: (N, C) as in :func:`scalar_metrics`.
        studies: the study of each image, or None for image-level metrics only.
        multilabel: sigmoid outputs with per-class targets.

    Returns:
        The flat :func:`scalar_metrics` dict, plus ``study_<metric>`` and ``studies`` (their number) when the images
        of every study share one label; without study metrics when they do not (logged, not raised).
    """
    metric = scalar_metrics(multilabel)
    out: dict[str, Any] = dict(metric(probs, targets))
    if studies is None:
        return out
    try:
        ps, ts, _ = aggregate_by_group(probs, targets, studies, multilabel)
    except ValueError as exc:  # images of a study disagree on the label: no study level
        logging.getLogger(__name__).warning("no study-level metrics: %s", exc)
        return out
    out.update({f"study_{k}": v for k, v in metric(ps, ts).items()})
    out["studies"] = len(ps)
    return out


__all__ = [
    "ECE_BINS",
    "MetricFn",
    "aggregate_by_group",
    "as_arrays",
    "classification_metrics",
    "first_appearance_codes",
    "image_and_study_metrics",
    "scalar_metrics",
    "to_jsonable",
]
