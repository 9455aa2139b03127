"""Operating points: per-class thresholds chosen on validation data and stored with the model."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve

from deeppneumonia.evaluation.metrics import _ovr_truth, as_arrays


def choose_thresholds(probs: np.ndarray, targets: np.ndarray, method: str = "youden",
                      target_sensitivity: float = 0.9) -> np.ndarray:
    """Per-class one-vs-rest operating points, to be chosen on VALIDATION data (roc_curve, prediction = p >= thr).

    Args:
        probs: (N, C). targets: (N, C), one-hot (multiclass) or 0 / 1 / NaN (multilabel; NaN masked per class).
        method: ``"youden"``: the threshold maximising TPR - FPR (the highest one on ties); ``"sensitivity"``: the
            highest threshold whose TPR >= ``target_sensitivity``.
        target_sensitivity: in (0, 1], for ``"sensitivity"``.

    Returns:
        (C,) thresholds; 0.5 for classes without both (known) positives and negatives.
    """
    if method not in ("youden", "sensitivity"):
        raise ValueError(f"method must be 'youden' or 'sensitivity', got {method!r}")
    if not 0.0 < target_sensitivity <= 1.0:
        raise ValueError(f"target_sensitivity must be in (0, 1], got {target_sensitivity}")
    p, t = as_arrays(probs, targets)
    truth, known = _ovr_truth(t)
    out = np.full(p.shape[1], 0.5)
    for k in range(p.shape[1]):
        m = known[:, k]
        y = truth[m, k]
        if not 0 < y.sum() < y.size:
            continue
        fpr, tpr, thr = roc_curve(y, p[m, k], drop_intermediate=False)
        finite = np.isfinite(thr)  # thr[0] is +inf (nothing predicted positive)
        fpr, tpr, thr = fpr[finite], tpr[finite], thr[finite]
        # thresholds decrease along the curve: argmax takes the first = highest qualifying threshold
        i = int(np.argmax(tpr - fpr)) if method == "youden" else int(np.argmax(tpr >= target_sensitivity - 1e-12))
        out[k] = float(thr[i])
    return out
