"""Metric maths of the evaluation: hand-computed cases, NaN masking, grouping, patient bootstrap, thresholds, JSON."""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score

from deeppneumonia.evaluation.bootstrap import bootstrap_ci, evaluate_with_ci
from deeppneumonia.evaluation.curves import curves, reliability
from deeppneumonia.evaluation.metrics import (
    aggregate_by_group,
    classification_metrics,
    scalar_metrics,
    to_jsonable,
)
from deeppneumonia.evaluation.thresholds import choose_thresholds

# 4 images, 2 classes. True labels 0, 1, 1, 1; argmax predictions 0, 1, 0, 1 -> accuracy 3/4.
HAND_PROBS = np.array([[0.55, 0.45], [0.30, 0.70], [0.62, 0.38], [0.15, 0.85]])
HAND_TARGETS = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.0, 1.0]])


def onehot(labels: np.ndarray, c: int) -> np.ndarray:
    return np.eye(c)[labels]


def synthetic_multiclass(n: int, c: int, seed: int, signal: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """(probs (n, c) softmax, one-hot targets (n, c)) with the true class's logit raised by ``signal``."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), labels] += signal
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return probs, onehot(labels, c)


def synthetic_multilabel(n: int, c: int, seed: int, nan_frac: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """(sigmoid probs (n, c), targets (n, c) in {0, 1, NaN})."""
    rng = np.random.default_rng(seed)
    y = (rng.random((n, c)) < 0.4).astype(np.float64)
    probs = 1 / (1 + np.exp(-(rng.normal(size=(n, c)) + 2.0 * (y - 0.5))))
    y[rng.random((n, c)) < nan_frac] = np.nan
    return probs, y


def strict_json(obj: Any) -> str:
    return json.dumps(obj, allow_nan=False)


# ----------------------------------------------------------------------------------------------------------------
# classification_metrics: multiclass
# ----------------------------------------------------------------------------------------------------------------
def test_multiclass_hand_computed() -> None:
    m = classification_metrics(HAND_PROBS, HAND_TARGETS, ["neg", "pos"])
    assert m["n"] == 4
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["confusion_matrix"] == [[1, 0], [1, 2]]  # rows = true class
    neg, pos = m["per_class"]["neg"], m["per_class"]["pos"]
    # class 0: predicted for images 0 and 2, one right -> precision 1/2; its only image found -> recall 1
    assert (neg["precision"], neg["recall"], neg["f1"], neg["support"]) == pytest.approx((0.5, 1.0, 2 / 3, 1))
    assert (pos["precision"], pos["recall"], pos["f1"], pos["support"]) == pytest.approx((1.0, 2 / 3, 0.8, 3))
    assert m["balanced_accuracy"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    # AUROC from pairs: class 1 positives score .70 .38 .85 against the one negative's .45 -> 2 of 3 pairs right
    assert pos["auroc"] == pytest.approx(2 / 3)
    assert neg["auroc"] == pytest.approx(2 / 3)  # .55 beats .30 and .15, loses to .62
    # AP: ranking for class 1 is + + - + -> (1/1 + 2/2 + 3/4) / 3 ; class 0: - + - - -> 1/2
    assert pos["ap"] == pytest.approx((1 + 1 + 0.75) / 3)
    assert neg["ap"] == pytest.approx(0.5)
    assert m["auroc_macro"] == pytest.approx(2 / 3)
    assert m["map"] == pytest.approx((0.5 + 2.75 / 3) / 2)
    # confidences .55 .70 .62 .85 fall in four different bins; correct = 1, 1, 0, 1
    assert m["ece"] == pytest.approx((0.45 + 0.30 + 0.62 + 0.15) / 4)
    strict_json(m)


def test_multiclass_ece_shared_bin_and_reliability() -> None:
    probs = np.array([[0.90, 0.10], [0.92, 0.08], [0.30, 0.70], [0.35, 0.65]])
    targets = onehot(np.array([0, 1, 1, 0]), 2)  # correct, wrong, correct, wrong
    # bin (13/15, 14/15] holds .90 and .92: accuracy 1/2, confidence .91
    expected = 0.5 * abs(0.5 - 0.91) + 0.25 * abs(1 - 0.70) + 0.25 * abs(0 - 0.65)
    assert classification_metrics(probs, targets, ["a", "b"])["ece"] == pytest.approx(expected)
    rel = reliability(probs, targets)
    assert set(rel) == {"centres", "accuracy", "confidence", "count"}
    assert all(len(v) == 15 for v in rel.values())
    assert rel["centres"][0] == pytest.approx(1 / 30)
    assert rel["count"][13] == 2 and sum(rel["count"]) == 4
    assert rel["accuracy"][13] == pytest.approx(0.5) and rel["confidence"][13] == pytest.approx(0.91)
    assert rel["accuracy"][0] is None and rel["confidence"][0] is None  # empty bin
    # ECE = sum over bins of count / n * |accuracy - confidence|
    ece = sum(n / 4 * abs(a - c) for a, c, n in zip(rel["accuracy"], rel["confidence"], rel["count"], strict=True)
              if n and a is not None and c is not None)
    assert ece == pytest.approx(expected)
    strict_json(rel)


def test_multiclass_perfect_predictions() -> None:
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3, 2])
    probs = np.full((9, 4), 0.01 / 3)
    probs[np.arange(9), labels] = 0.99
    m = classification_metrics(probs, onehot(labels, 4), list("abcd"))
    assert m["accuracy"] == 1.0 and m["balanced_accuracy"] == 1.0 and m["macro_f1"] == 1.0
    assert m["auroc_macro"] == 1.0 and m["map"] == 1.0
    assert m["ece"] == pytest.approx(0.01)
    assert np.array_equal(np.diag(m["confusion_matrix"]), [2, 2, 3, 2])


def test_multiclass_matches_sklearn_and_scalar_metrics() -> None:
    probs, targets = synthetic_multiclass(300, 4, seed=1)
    m = classification_metrics(probs, targets, list("abcd"))
    labels = targets.argmax(1)
    for k, name in enumerate("abcd"):
        assert m["per_class"][name]["auroc"] == pytest.approx(roc_auc_score(labels == k, probs[:, k]))
        assert m["per_class"][name]["ap"] == pytest.approx(average_precision_score(labels == k, probs[:, k]))
    assert m["macro_f1"] == pytest.approx(np.mean([v["f1"] for v in m["per_class"].values()]))
    s = scalar_metrics(False)(probs, targets)
    assert set(s) == {"accuracy", "balanced_accuracy", "macro_f1", "auroc_macro", "map"}
    for key, val in s.items():
        assert val == pytest.approx(m[key])


def test_multiclass_missing_class_gives_none_and_strict_json() -> None:
    probs, targets = synthetic_multiclass(40, 3, seed=2)
    targets = onehot(np.where(targets.argmax(1) == 2, 0, targets.argmax(1)), 3)  # no image of class 2
    m = classification_metrics(probs, targets, ["x", "y", "z"])
    assert m["per_class"]["z"]["auroc"] is None and m["per_class"]["z"]["ap"] is None
    assert m["per_class"]["z"]["support"] == 0
    assert m["auroc_macro"] == pytest.approx(np.mean([m["per_class"][c]["auroc"] for c in "xy"]))
    assert m["map"] == pytest.approx(np.mean([m["per_class"][c]["ap"] for c in "xy"]))
    strict_json(m)


def test_multiclass_ignores_thresholds_and_rejects_bad_input() -> None:
    a = classification_metrics(HAND_PROBS, HAND_TARGETS, ["a", "b"])
    b = classification_metrics(HAND_PROBS, HAND_TARGETS, ["a", "b"], thresholds=np.array([0.99, 0.99]))
    assert a == b
    with pytest.raises(ValueError, match="same shape"):
        classification_metrics(HAND_PROBS, HAND_TARGETS[:3], ["a", "b"])
    with pytest.raises(ValueError, match="class names"):
        classification_metrics(HAND_PROBS, HAND_TARGETS, ["a"])
    with pytest.raises(ValueError, match="NaN"):
        classification_metrics(HAND_PROBS, np.where(HAND_TARGETS == 0, np.nan, 1.0), ["a", "b"])
    with pytest.raises(ValueError, match="one-hot"):
        classification_metrics(HAND_PROBS, np.ones((4, 2)), ["a", "b"])


def test_empty_input_gives_none() -> None:
    m = classification_metrics(np.zeros((0, 2)), np.zeros((0, 2)), ["a", "b"])
    assert m["n"] == 0 and m["accuracy"] is None and m["ece"] is None
    assert m["confusion_matrix"] == [[0, 0], [0, 0]]
    strict_json(m)
    strict_json(classification_metrics(np.zeros((0, 2)), np.zeros((0, 2)), ["a", "b"], multilabel=True))


# ----------------------------------------------------------------------------------------------------------------
# classification_metrics: multilabel
# ----------------------------------------------------------------------------------------------------------------
def test_multilabel_hand_computed() -> None:
    probs = np.array([[0.9, 0.2], [0.7, 0.6], [0.3, 0.1], [0.2, 0.8]])
    targets = np.array([[1.0, 0.0], [0.0, np.nan], [1.0, 0.0], [0.0, 1.0]])
    m = classification_metrics(probs, targets, ["a", "b"], multilabel=True, thresholds=np.array([0.5, 0.5]))
    a, b = m["per_class"]["a"], m["per_class"]["b"]
    # class a: predictions 1 1 0 0 vs 1 0 1 0 -> tp 1, fp 1, fn 1
    assert (a["precision"], a["recall"], a["f1"], a["support"], a["n_known"]) == pytest.approx((0.5, 0.5, 0.5, 2, 4))
    assert a["auroc"] == pytest.approx(0.75)  # positives .9 .3 vs negatives .7 .2: 3 of 4 pairs
    # class b, image 1 unknown: predictions 0 0 1 vs 0 0 1
    assert (b["precision"], b["recall"], b["f1"], b["support"], b["n_known"]) == pytest.approx((1, 1, 1, 1, 3))
    assert b["auroc"] == 1.0 and b["ap"] == 1.0
    assert m["macro_f1"] == pytest.approx(0.75)
    # 7 known pairs, binary calibration; bins: .9|.7|.3|.2 for a, .2 (shares with a's .2)|.1|.8 for b
    # bin (.1333, .2]: probs .2 (y 0) and .2 (y 0) -> |0 - .2| * 2 ; the others alone
    expected = (abs(1 - 0.9) + abs(0 - 0.7) + abs(1 - 0.3) + 2 * abs(0 - 0.2) + abs(0 - 0.1) + abs(1 - 0.8)) / 7
    assert m["ece"] == pytest.approx(expected)
    assert m["thresholds"] == [0.5, 0.5]
    strict_json(m)


def test_multilabel_nan_targets_contribute_nothing() -> None:
    probs, targets = synthetic_multilabel(200, 5, seed=3)
    names = [f"f{k}" for k in range(5)]
    m = classification_metrics(probs, targets, names, multilabel=True)
    known = ~np.isnan(targets)
    for k, name in enumerate(names):
        sub = classification_metrics(probs[known[:, k], k:k + 1], targets[known[:, k], k:k + 1], [name],
                                     multilabel=True)["per_class"][name]
        assert m["per_class"][name] == pytest.approx(sub)
        assert sub["auroc"] == pytest.approx(roc_auc_score(targets[known[:, k], k], probs[known[:, k], k]))
    flat = classification_metrics(probs[known][:, None], targets[known][:, None], ["all"], multilabel=True)
    assert m["ece"] == pytest.approx(flat["ece"])
    # whatever the model says where the target is unknown changes nothing
    scrambled = probs.copy()
    scrambled[~known] = np.random.default_rng(0).random(int((~known).sum()))
    assert classification_metrics(scrambled, targets, names, multilabel=True) == m
    assert reliability(scrambled, targets, multilabel=True) == reliability(probs, targets, multilabel=True)
    s = scalar_metrics(True)(probs, targets)
    assert set(s) == {"auroc_macro", "map", "macro_f1"}
    for key, val in s.items():
        assert val == pytest.approx(m[key])


def test_multilabel_class_without_known_targets() -> None:
    probs, targets = synthetic_multilabel(30, 3, seed=4)
    targets[:, 2] = np.nan
    targets[:, 1] = np.where(np.isnan(targets[:, 1]), np.nan, 0.0)  # known but no positive
    m = classification_metrics(probs, targets, ["a", "b", "c"], multilabel=True)
    assert m["per_class"]["c"]["f1"] is None and m["per_class"]["c"]["n_known"] == 0
    assert m["per_class"]["b"]["auroc"] is None and m["per_class"]["b"]["support"] == 0
    assert m["auroc_macro"] == pytest.approx(m["per_class"]["a"]["auroc"])
    assert m["macro_f1"] == pytest.approx(np.mean([m["per_class"][c]["f1"] for c in "ab"]))
    strict_json(m)
    with pytest.raises(ValueError, match="0, 1 or NaN"):
        classification_metrics(probs, np.full_like(probs, 0.5), ["a", "b", "c"], multilabel=True)
    with pytest.raises(ValueError, match="thresholds"):
        classification_metrics(probs, targets, ["a", "b", "c"], multilabel=True, thresholds=np.array([0.5]))


# ----------------------------------------------------------------------------------------------------------------
# aggregate_by_group
# ----------------------------------------------------------------------------------------------------------------
def test_aggregate_by_group_multiclass() -> None:
    probs = np.array([[0.8, 0.2], [0.2, 0.8], [0.6, 0.4], [0.4, 0.6], [0.5, 0.5]])
    targets = onehot(np.array([1, 0, 1, 0, 1]), 2)
    p_g, t_g, ids = aggregate_by_group(probs, targets, ["s2", "s1", "s2", "s1", "s3"])
    assert ids == ["s2", "s1", "s3"]  # first-appearance order
    assert p_g == pytest.approx(np.array([[0.7, 0.3], [0.3, 0.7], [0.5, 0.5]]))
    assert np.array_equal(t_g, onehot(np.array([1, 0, 1]), 2))
    with pytest.raises(ValueError, match="s1"):
        aggregate_by_group(probs, onehot(np.array([1, 0, 1, 1, 1]), 2), ["s2", "s1", "s2", "s1", "s3"])


def test_aggregate_by_group_multilabel_nanmax() -> None:
    probs = np.array([[0.2, 0.4], [0.6, 0.8], [0.5, 0.5]])
    targets = np.array([[0.0, np.nan], [1.0, np.nan], [np.nan, 0.0]])
    p_g, t_g, ids = aggregate_by_group(probs, targets, ["a", "a", "b"], multilabel=True)
    assert ids == ["a", "b"]
    assert p_g == pytest.approx(np.array([[0.4, 0.6], [0.5, 0.5]]))
    assert t_g[0, 0] == 1.0 and np.isnan(t_g[0, 1]) and np.isnan(t_g[1, 0]) and t_g[1, 1] == 0.0


# ----------------------------------------------------------------------------------------------------------------
# bootstrap
# ----------------------------------------------------------------------------------------------------------------
def accuracy_only(p: np.ndarray, t: np.ndarray) -> dict[str, float]:
    return {"accuracy": float(accuracy_score(t.argmax(1), p.argmax(1)))}


def test_bootstrap_ci_contains_point_estimate() -> None:
    probs, targets = synthetic_multiclass(80, 3, seed=5)
    fn = scalar_metrics(False)
    ci = bootstrap_ci(probs, targets, [f"p{i // 2}" for i in range(80)], fn, n_boot=60, seed=0)
    point = fn(probs, targets)
    assert set(ci) == set(point)
    for key, (lo, hi) in ci.items():
        assert lo <= point[key] <= hi, key


def test_bootstrap_ci_narrows_with_more_patients() -> None:
    widths = []
    for n_pat in (40, 640):
        probs, targets = synthetic_multiclass(2 * n_pat, 3, seed=5)
        ci = bootstrap_ci(probs, targets, [f"p{i // 2}" for i in range(2 * n_pat)], accuracy_only, n_boot=300)
        lo, hi = ci["accuracy"]
        assert lo <= accuracy_only(probs, targets)["accuracy"] <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2  # ~ 1 / sqrt(16) = 1/4 expected


def test_bootstrap_identical_duplicates_equal_deduplicated() -> None:
    probs, targets = synthetic_multiclass(60, 3, seed=6)
    patients = [f"p{i}" for i in range(60)]
    fn = scalar_metrics(False)
    dedup = bootstrap_ci(probs, targets, patients, fn, n_boot=40, seed=3)
    # every patient now has 3 identical images, rows interleaved
    rep = np.tile(np.arange(60), 3)
    dup = bootstrap_ci(probs[rep], targets[rep], [patients[i] for i in rep], fn, n_boot=40, seed=3)
    assert dup.keys() == dedup.keys()
    for key in dedup:
        assert dup[key] == pytest.approx(dedup[key]), key


def test_bootstrap_draws_whole_patients() -> None:
    sizes = [1, 2, 3, 4, 5]  # patient j has sizes[j] images, rows shuffled
    patient_of_row = np.random.default_rng(0).permutation(np.repeat(np.arange(5), sizes))
    n = patient_of_row.size
    probs = np.column_stack([np.arange(n, dtype=float), np.zeros(n)])  # column 0 carries the row index
    seen: list[Counter[int]] = []

    def record(p: np.ndarray, t: np.ndarray) -> dict[str, float]:
        seen.append(Counter(p[:, 0].astype(int).tolist()))
        return {"rows": float(len(p))}

    bootstrap_ci(probs, np.zeros((n, 2)), [f"P{j}" for j in patient_of_row], record, n_boot=60, seed=1)
    assert len(seen) == 60
    for rows in seen:
        drawn: Counter[int] = Counter()
        for j in range(5):
            mine = [rows[int(r)] for r in np.flatnonzero(patient_of_row == j)]
            assert len(set(mine)) == 1  # all images of a patient appear equally often (0 = not drawn)
            drawn[j] = mine[0]
        assert sum(drawn.values()) == 5  # 5 patients drawn per resample
    assert any(max(r.values()) > 1 for r in seen)  # with replacement


def test_bootstrap_too_few_valid_resamples_gives_nan() -> None:
    calls = iter(range(10**6))

    def flaky(p: np.ndarray, t: np.ndarray) -> dict[str, float]:
        i = next(calls)
        return {"mostly_nan": float("nan") if i % 3 else 1.0, "sometimes_none": None if i % 3 == 0 else 2.0}  # type: ignore[dict-item]

    probs, targets = synthetic_multiclass(20, 2, seed=7)
    ci = bootstrap_ci(probs, targets, [str(i) for i in range(20)], flaky, n_boot=90)
    assert all(math.isnan(v) for v in ci["mostly_nan"])  # 1/3 valid
    assert ci["sometimes_none"] == (2.0, 2.0)  # 2/3 valid: the None ones are skipped


def test_bootstrap_rare_class_none_in_json() -> None:
    probs, targets = synthetic_multiclass(30, 3, seed=8)
    labels = targets.argmax(1)
    labels[labels == 2] = 0
    labels[0] = 2  # class 2 on one image only: each resample lacks it with probability (29/30)^30 ~ 36 %
    res = evaluate_with_ci(probs, onehot(labels, 3), list("abc"), [str(i) for i in range(30)], n_boot=40)
    strict_json(res)
    assert all(lo is not None and lo <= hi for lo, hi in res["image"]["ci"].values())


def test_bootstrap_n_jobs_does_not_change_result() -> None:
    joblib = pytest.importorskip("joblib")
    probs, targets = synthetic_multiclass(100, 3, seed=10)
    patients = [f"p{i // 3}" for i in range(100)]
    serial = bootstrap_ci(probs, targets, patients, accuracy_only, n_boot=120, n_jobs=1)
    with joblib.parallel_config(backend="threading"):  # the chunked parallel path without process start-up
        assert bootstrap_ci(probs, targets, patients, accuracy_only, n_boot=120, n_jobs=2) == serial


# ----------------------------------------------------------------------------------------------------------------
# evaluate_with_ci
# ----------------------------------------------------------------------------------------------------------------
def test_evaluate_with_ci_image_and_study_levels() -> None:
    probs, targets = synthetic_multiclass(90, 3, seed=11)
    study_of_row = np.arange(90) // 3
    targets = targets[study_of_row * 3]  # the images of a study share its label
    patients = [f"P{s // 2}" for s in study_of_row]  # 2 studies per patient
    studies = [f"S{s}" for s in study_of_row]
    res = evaluate_with_ci(probs, targets, list("abc"), patients, studies, n_boot=30, seed=1)
    assert set(res) == {"image", "study", "n_boot"} and res["n_boot"] == 30
    assert res["image"]["n"] == 90 and res["study"]["n"] == 30
    assert res["image"] == {**classification_metrics(probs, targets, list("abc")), "ci": res["image"]["ci"]}
    p_s, t_s, _ = aggregate_by_group(probs, targets, studies)
    assert res["study"]["accuracy"] == classification_metrics(p_s, t_s, list("abc"))["accuracy"]
    for level in ("image", "study"):
        assert set(res[level]["ci"]) == {"accuracy", "balanced_accuracy", "macro_f1", "auroc_macro", "map"}
        lo, hi = res[level]["ci"]["accuracy"]
        assert lo <= res[level]["accuracy"] <= hi
    # the study-level bootstrap resamples the 15 patients, not the 30 studies
    expected = bootstrap_ci(p_s, t_s, [f"P{s // 2}" for s in range(30)], scalar_metrics(False), n_boot=30, seed=1)
    assert res["study"]["ci"] == to_jsonable(expected)
    strict_json(res)
    assert "study" not in evaluate_with_ci(probs, targets, list("abc"), patients, n_boot=20)


def test_evaluate_with_ci_multilabel() -> None:
    probs, targets = synthetic_multilabel(80, 4, seed=12)
    patients = [f"P{i // 2}" for i in range(80)]
    thr = np.array([0.3, 0.4, 0.5, 0.6])
    res = evaluate_with_ci(probs, targets, list("abcd"), patients, patients, multilabel=True, n_boot=20,
                           thresholds=thr)
    assert set(res["image"]["ci"]) == {"auroc_macro", "map", "macro_f1"}
    assert res["image"]["thresholds"] == pytest.approx(thr.tolist())
    assert res["study"]["n"] == 40
    strict_json(res)


# ----------------------------------------------------------------------------------------------------------------
# choose_thresholds
# ----------------------------------------------------------------------------------------------------------------
def test_choose_thresholds_youden_separates() -> None:
    probs = np.array([[0.1, 0.5], [0.2, 0.5], [0.35, 0.5], [0.6, 0.5], [0.7, 0.5], [0.9, 0.5]])
    targets = np.array([[0, 0], [0, 0], [0, 0], [1, 0], [1, 0], [1, 0]], dtype=float)  # class 1: no positives
    thr = choose_thresholds(probs, targets, "youden")
    assert thr[0] == pytest.approx(0.6)  # the highest threshold with TPR 1 and FPR 0
    assert np.array_equal(probs[:, 0] >= thr[0], targets[:, 0] == 1)
    assert thr[1] == 0.5
    assert choose_thresholds(probs, targets, "sensitivity")[1] == 0.5


def test_choose_thresholds_sensitivity_target_met() -> None:
    probs, targets = synthetic_multiclass(400, 3, seed=13, signal=1.0)
    for target in (0.8, 0.9, 0.95):
        thr = choose_thresholds(probs, targets, "sensitivity", target)
        for k in range(3):
            pos = targets[:, k] == 1
            sens = np.mean(probs[pos, k] >= thr[k])
            assert sens >= target
            # highest such threshold: the next higher score would miss the target
            higher = probs[:, k][probs[:, k] > thr[k]]
            if higher.size:
                assert np.mean(probs[pos, k] >= higher.min()) < target


def test_choose_thresholds_masks_nan() -> None:
    probs, targets = synthetic_multilabel(200, 3, seed=14)
    known = ~np.isnan(targets)
    wild = probs.copy()
    wild[~known] = np.random.default_rng(1).random(int((~known).sum()))
    for method in ("youden", "sensitivity"):
        a = choose_thresholds(probs, targets, method)
        assert np.array_equal(a, choose_thresholds(wild, targets, method))
        for k in range(3):
            assert a[k] == choose_thresholds(probs[known[:, k], k:k + 1], targets[known[:, k], k:k + 1], method)[0]
    with pytest.raises(ValueError, match="method"):
        choose_thresholds(probs, targets, "f1")


# ----------------------------------------------------------------------------------------------------------------
# curves
# ----------------------------------------------------------------------------------------------------------------
def test_curves_downsampled_and_degenerate_class() -> None:
    probs, targets = synthetic_multiclass(3000, 3, seed=15, signal=0.5)
    targets = onehot(np.where(targets.argmax(1) == 2, 0, targets.argmax(1)), 3)
    out = curves(probs, targets, ["a", "b", "c"])
    for name in "ab":
        c = out[name]
        assert set(c) == {"fpr", "tpr", "precision", "recall"}
        assert 2 < len(c["fpr"]) == len(c["tpr"]) <= 200 and 2 < len(c["precision"]) == len(c["recall"]) <= 200
        assert (c["fpr"][0], c["tpr"][0], c["fpr"][-1], c["tpr"][-1]) == (0.0, 0.0, 1.0, 1.0)
        assert c["recall"][0] == 1.0 and c["recall"][-1] == 0.0
        assert np.all(np.diff(c["fpr"]) >= 0) and np.all(np.diff(c["tpr"]) >= 0)
    assert out["c"] == {"fpr": [], "tpr": [], "precision": [], "recall": []}
    strict_json(out)


def test_curves_nan_masked() -> None:
    probs, targets = synthetic_multilabel(100, 2, seed=16)
    known = ~np.isnan(targets[:, 0])
    full = curves(probs, targets, ["a", "b"])["a"]
    assert full == curves(probs[known, :1], targets[known, :1], ["a"])["a"]
