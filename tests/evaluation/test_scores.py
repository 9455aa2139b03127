"""The numpy scores of the bootstrap hot path equal scikit-learn's (the reference), ties and empty classes included."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
)

from deeppneumonia.evaluation.metrics import classification_metrics, scalar_metrics
from deeppneumonia.evaluation.scores import binary_auroc_ap, confusion, multiclass_counts, ovr_auroc_ap


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 60), st.integers(0, 2**31 - 1), st.sampled_from([2, 5, 1000]))
def test_binary_auroc_and_ap_equal_sklearn_with_ties(n: int, seed: int, levels: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, levels, n) / levels  # few levels: many ties
    truth = rng.random(n) < 0.4
    truth[0], truth[1] = True, False
    auroc, ap = binary_auroc_ap(scores, truth)
    assert auroc == pytest.approx(roc_auc_score(truth, scores), abs=1e-12)
    assert ap == pytest.approx(average_precision_score(truth, scores), abs=1e-12)


def test_ovr_scores_are_nan_for_a_class_without_positives_and_respect_the_mask() -> None:
    rng = np.random.default_rng(0)
    p = rng.random((40, 3))
    truth = np.zeros((40, 3), dtype=bool)
    truth[:15, 0] = True
    truth[::3, 1] = True  # class 2: no positive
    known = np.ones((40, 3), dtype=bool)
    known[30:, 1] = False
    auroc, ap = ovr_auroc_ap(p, truth, known)
    assert np.isnan(auroc[2]) and np.isnan(ap[2])
    assert auroc[0] == pytest.approx(roc_auc_score(truth[:, 0], p[:, 0]), abs=1e-12)
    assert ap[1] == pytest.approx(average_precision_score(truth[:30, 1], p[:30, 1]), abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 50), st.integers(0, 2**31 - 1))
def test_confusion_scores_equal_sklearn_with_absent_classes(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    c = 4
    labels = rng.integers(0, 3, n)  # class 3 never true
    pred = rng.integers(0, c, n)
    cm = confusion(labels, pred, c)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.array_equal(cm, confusion_matrix(labels, pred, labels=list(range(c))))
    got = multiclass_counts(cm)
    prec, rec, f1, support = precision_recall_fscore_support(labels, pred, labels=list(range(c)), zero_division=0)
    for mine, ref in ((got["precision"], prec), (got["recall"], rec), (got["f1"], f1), (got["support"], support)):
        np.testing.assert_allclose(mine, ref, atol=1e-12)
    assert got["accuracy"] == pytest.approx(accuracy_score(labels, pred), abs=1e-12)
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true", "a single label was found"
        warnings.simplefilter("ignore")
        ref_bacc = balanced_accuracy_score(labels, pred)
    assert got["balanced_accuracy"] == pytest.approx(ref_bacc, abs=1e-12)


def test_scalar_and_full_metrics_agree_with_sklearn_end_to_end() -> None:
    rng = np.random.default_rng(3)
    p = rng.dirichlet(np.ones(4), size=200)
    labels = rng.integers(0, 4, 200)
    t = np.eye(4)[labels]
    s = scalar_metrics(False)(p, t)
    assert s["macro_f1"] == pytest.approx(precision_recall_fscore_support(
        labels, p.argmax(1), labels=list(range(4)), average="macro", zero_division=0)[2], abs=1e-12)
    assert s["auroc_macro"] == pytest.approx(roc_auc_score(t, p, average="macro"), abs=1e-12)
    assert s["map"] == pytest.approx(average_precision_score(t, p, average="macro"), abs=1e-12)
    # multilabel with unknown targets: F1 per class over the known pairs only
    tl = (rng.random((200, 3)) < 0.3).astype(float)
    tl[:50, 2] = np.nan
    pl = rng.random((200, 3))
    full = classification_metrics(pl, tl, ["a", "b", "c"], multilabel=True)
    known = ~np.isnan(tl[:, 2])
    ref = precision_recall_fscore_support(tl[known, 2], pl[known, 2] >= 0.5, average="binary", zero_division=0)
    assert full["per_class"]["c"]["precision"] == pytest.approx(ref[0], abs=1e-12)
    assert full["per_class"]["c"]["f1"] == pytest.approx(ref[2], abs=1e-12)
    assert full["per_class"]["c"]["n_known"] == 150
