"""The per-class scores every bootstrap resample recomputes, in plain numpy: AUROC, average precision, and the
confusion-count scores (precision, recall, F1, accuracy, balanced accuracy).

scikit-learn defines them and is the reference: ``tests/evaluation/test_scores.py`` checks each function here
against ``roc_auc_score``, ``average_precision_score``, ``precision_recall_fscore_support``, ``accuracy_score``
and ``balanced_accuracy_score`` on random inputs with ties, to 1e-12. They are re-implemented for speed alone:
scikit-learn 1.9 validates its inputs on every call (``check_array``, ``type_of_target``, parameter checks), about
25 ms for the five multi-class scalars of 1,000 images and 4 classes against well under 1 ms of arithmetic, and a
paired seed-and-patient bootstrap calls them 2 x seeds x 1,000 times per level (minutes for five seeds). Inputs are
trusted here: :mod:`deeppneumonia.evaluation.metrics` checks them once at its boundary.
"""

from __future__ import annotations

import numpy as np

NAN = float("nan")


def binary_auroc_ap(scores: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """AUROC and average precision of one binary problem with at least one positive and one negative.

    AUROC is the trapezoidal area under the ROC curve over the distinct thresholds (ties scored half, as
    ``roc_auc_score``); AP is ``sum_n (R_n - R_{n-1}) P_n`` over the distinct thresholds in decreasing order
    (``average_precision_score``: no interpolation).

    Args:
        scores: (N,) float. truth: (N,) bool, True = positive.
    """
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], truth[order]
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # the last row of each group of tied scores
    tps = np.cumsum(y)[last].astype(np.float64)
    fps = (last + 1) - tps
    tpr = np.r_[0.0, tps] / tps[-1]
    fpr = np.r_[0.0, fps] / fps[-1]
    auroc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2)
    ap = float(np.sum(np.diff(tpr) * (tps / (tps + fps))))
    return auroc, ap


def ovr_auroc_ap(p: np.ndarray, truth: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class one-vs-rest AUROC and AP, each (C,), NaN for classes lacking (known) positives or negatives.

    Args:
        p: (N, C) scores. truth: (N, C) bool positives. known: (N, C) bool, False = masked out for that class.
    """
    c = p.shape[1]
    auroc, ap = np.full(c, NAN), np.full(c, NAN)
    for k in range(c):
        m = known[:, k]
        y = truth[m, k]
        n_pos = int(y.sum())
        if 0 < n_pos < y.size:
            auroc[k], ap[k] = binary_auroc_ap(p[m, k], y)
    return auroc, ap


def confusion(labels: np.ndarray, pred: np.ndarray, c: int) -> np.ndarray:
    """(C, C) int64 confusion matrix, rows = true class, columns = predicted (``confusion_matrix`` with
    ``labels=range(C)``)."""
    return np.bincount(labels * c + pred, minlength=c * c).reshape(c, c)


def prf_from_counts(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall and F1 from true-positive, false-positive and false-negative counts, 0 where a
    denominator is 0 (``zero_division=0``); F1 = 2 TP / (2 TP + FP + FN)."""
    tp, fp, fn = (np.asarray(a, dtype=np.float64) for a in (tp, fp, fn))
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        rec = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    return prec, rec, f1


def multiclass_counts(cm: np.ndarray) -> dict[str, np.ndarray | float]:
    """From a (C, C) confusion matrix: per-class ``precision``, ``recall``, ``f1``, ``support`` and the scalars
    ``accuracy`` and ``balanced_accuracy`` (mean recall over the classes present in the targets, as
    ``balanced_accuracy_score``); NaN scalars for an empty matrix."""
    tp = np.diag(cm)
    support = cm.sum(axis=1)
    prec, rec, f1 = prf_from_counts(tp, cm.sum(axis=0) - tp, support - tp)
    n = int(cm.sum())
    present = support > 0
    return {"precision": prec, "recall": rec, "f1": f1, "support": support,
            "accuracy": float(tp.sum() / n) if n else NAN,
            "balanced_accuracy": float(rec[present].mean()) if present.any() else NAN}
