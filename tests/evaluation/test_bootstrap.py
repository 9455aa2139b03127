from __future__ import annotations

import numpy as np
import pytest

from deeppneumonia.evaluation.bootstrap import paired_seed_bootstrap
from deeppneumonia.evaluation.metrics import scalar_metrics


def _data(n: int = 120, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    return np.eye(2)[labels], [i // 2 for i in range(n)]  # two images per patient


def _probs(targets: np.ndarray, skill: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    score = skill * targets[:, 1] + rng.normal(0, 1, len(targets))
    p1 = 1 / (1 + np.exp(-score))
    return np.stack([1 - p1, p1], 1)


def test_identical_methods_differ_by_exactly_zero() -> None:
    t, patients = _data()
    runs = [_probs(t, 1.0, s) for s in range(3)]
    out = paired_seed_bootstrap(runs, runs, t, patients, scalar_metrics(False), n_boot=50)
    assert out["auroc_macro"] == (0.0, 0.0, 0.0)


def test_a_better_method_has_an_interval_above_zero() -> None:
    t, patients = _data()
    good = [_probs(t, 3.0, s) for s in range(3)]
    poor = [_probs(t, 0.0, 10 + s) for s in range(3)]
    point, lo, hi = paired_seed_bootstrap(good, poor, t, patients, scalar_metrics(False), n_boot=200)["auroc_macro"]
    assert 0 < lo <= point <= hi
    swapped = paired_seed_bootstrap(poor, good, t, patients, scalar_metrics(False), n_boot=200)["auroc_macro"]
    assert swapped[0] == pytest.approx(-point)


def test_seed_noise_widens_the_interval() -> None:
    """Runs whose quality varies from seed to seed give a wider interval than one run repeated."""
    t, patients = _data(200)
    base = [_probs(t, 1.5, 0)] * 4
    steady = paired_seed_bootstrap([_probs(t, 2.0, 1)] * 4, base, t, patients, scalar_metrics(False), n_boot=300)
    varied = paired_seed_bootstrap([_probs(t, s, 1) for s in (0.5, 1.0, 3.0, 3.5)], base, t, patients,
                                   scalar_metrics(False), n_boot=300)
    width = lambda r: r["auroc_macro"][2] - r["auroc_macro"][1]  # noqa: E731
    assert width(varied) > width(steady)


def test_mismatched_runs_are_refused() -> None:
    t, patients = _data()
    with pytest.raises(ValueError, match="same number"):
        paired_seed_bootstrap([_probs(t, 1, 0)], [], t, patients, scalar_metrics(False))
