"""Classification metrics from probabilities (scikit-learn does the maths)."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    f1_score,
    roc_auc_score,
)


def multiclass_metrics(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro-F1, macro one-vs-rest AUROC and mAP.

    Args:
        probs: (N, C) class probabilities. labels: (N,) int class indices.
    AUROC/AP are averaged over the classes present in ``labels`` (NaN if fewer than two are).
    """
    c = probs.shape[1]
    pred = probs.argmax(1)
    out = {"accuracy": float(accuracy_score(labels, pred)),
           "balanced_accuracy": float(balanced_accuracy_score(labels, pred)) if len(labels) else float("nan"),
           "macro_f1": float(f1_score(labels, pred, average="macro", labels=list(range(c)), zero_division=0))}
    onehot = np.eye(c)[labels]
    present = [k for k in range(c) if 0 < onehot[:, k].sum() < len(labels)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["auroc"] = float(np.mean([roc_auc_score(onehot[:, k], probs[:, k]) for k in present])) \
            if present else float("nan")
        out["map"] = float(np.mean([average_precision_score(onehot[:, k], probs[:, k]) for k in present])) \
            if present else float("nan")
    return out


def multilabel_metrics(probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Mean AUROC and mAP over findings, NaN targets (unknown) left out per finding."""
    aurocs, aps = [], []
    for k in range(targets.shape[1]):
        known = ~np.isnan(targets[:, k])
        y = targets[known, k]
        if 0 < y.sum() < len(y):
            aurocs.append(roc_auc_score(y, probs[known, k]))
            aps.append(average_precision_score(y, probs[known, k]))
    return {"auroc": float(np.mean(aurocs)) if aurocs else float("nan"),
            "map": float(np.mean(aps)) if aps else float("nan")}
