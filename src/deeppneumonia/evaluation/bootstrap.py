"""Patient-bootstrap confidence intervals of the metrics of :mod:`deeppneumonia.evaluation.metrics`.

Resampling is over patients (all images of a drawn patient, as often as it is drawn), seeded per chunk so the
result depends on the seed only, not on the number of worker processes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

from deeppneumonia.evaluation.metrics import (
    NAN,
    MetricFn,
    aggregate_by_group,
    as_arrays,
    classification_metrics,
    first_appearance_codes,
    scalar_metrics,
    to_jsonable,
)

BOOT_CHUNK = 50
"""Bootstrap resamples per chunk (the unit of seeding and of parallel work)."""
MIN_VALID_FRACTION = 0.5
"""A bootstrap interval needs at least this fraction of resamples with a defined metric, else it is (nan, nan)."""

__all__ = ["BOOT_CHUNK", "MIN_VALID_FRACTION", "bootstrap_ci", "evaluate_with_ci", "paired_seed_bootstrap"]


def _bootstrap_chunk(p: np.ndarray, t: np.ndarray, rows_by_patient: np.ndarray, count: np.ndarray, start: np.ndarray,
                     seed: np.random.SeedSequence, n: int, metric_fn: MetricFn) -> list[dict[str, float]]:
    """``metric_fn`` on ``n`` patient resamples drawn with ``default_rng(seed)`` (see :func:`bootstrap_ci`)."""
    rng = np.random.default_rng(seed)
    n_pat = count.size
    results = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(n):
            drawn = rng.integers(0, n_pat, size=n_pat)
            lengths = count[drawn]
            ends = np.cumsum(lengths)
            # position within the resample -> position within rows_by_patient, for all drawn patients at once
            rows = rows_by_patient[np.repeat(start[drawn] - (ends - lengths), lengths) + np.arange(ends[-1])]
            results.append(dict(metric_fn(p[rows], t[rows])))
    return results


def bootstrap_ci(probs: np.ndarray, targets: np.ndarray, patients: Sequence[Hashable], metric_fn: MetricFn,
                 n_boot: int = 1000, seed: int = 0, alpha: float = 0.05, n_jobs: int = 1) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals over PATIENTS.

    Each resample draws P patients with replacement out of the P distinct ones (indexed in order of first
    appearance) and takes all rows of every drawn patient, repeated as often as the patient is drawn; ``metric_fn``
    is evaluated on those rows. Per key, resamples where the value is None or NaN are skipped; with fewer than 50 %
    valid resamples the interval is (nan, nan).

    Resamples come in chunks of ``BOOT_CHUNK``, chunk i drawing from ``default_rng(SeedSequence(seed).spawn(...)[i])``,
    so the result depends on ``seed`` only, not on ``n_jobs``.

    Args:
        probs: (N, C). targets: (N, C). patients: N patient ids.
        metric_fn: (probs (M, C), targets (M, C)) -> flat dict of floats, e.g. ``scalar_metrics(multilabel)``.
        n_boot: number of resamples. seed: RNG seed. alpha: 1 - confidence level.
        n_jobs: worker processes (joblib; -1 = all cores, ``metric_fn`` must then be picklable by cloudpickle).
            sklearn's input validation makes a metric call cost milliseconds, so workers pay off for large n_boot.

    Returns:
        ``{key: (lower, upper)}`` at the alpha / 2 and 1 - alpha / 2 percentiles, keys in order of first appearance.
    """
    p, t = np.asarray(probs), np.asarray(targets)
    if len(patients) != len(p) or len(t) != len(p):
        raise ValueError(f"{len(p)} probability rows, {len(t)} target rows and {len(patients)} patient ids")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    codes, ids = first_appearance_codes(patients)
    if not ids:
        return {}
    rows_by_patient = np.argsort(codes, kind="stable")  # rows of patient j: rows_by_patient[start[j]:][:count[j]]
    count = np.bincount(codes, minlength=len(ids))
    start = np.concatenate(([0], np.cumsum(count)[:-1]))
    sizes = [min(BOOT_CHUNK, n_boot - i) for i in range(0, n_boot, BOOT_CHUNK)]
    seeds = np.random.SeedSequence(seed).spawn(len(sizes))
    args = (p, t, rows_by_patient, count, start)
    if n_jobs == 1:
        chunks = [_bootstrap_chunk(*args, s, n, metric_fn) for s, n in zip(seeds, sizes, strict=True)]
    else:
        from joblib import Parallel, delayed  # scikit-learn's own dependency

        chunks = Parallel(n_jobs=n_jobs)(delayed(_bootstrap_chunk)(*args, s, n, metric_fn)
                                         for s, n in zip(seeds, sizes, strict=True))
    values: dict[str, list[float]] = {}
    for res in (r for chunk in chunks for r in chunk):
        for key, val in res.items():
            kept = values.setdefault(key, [])
            if val is not None and math.isfinite(val):
                kept.append(float(val))
    out: dict[str, tuple[float, float]] = {}
    for key, kept in values.items():
        if len(kept) < MIN_VALID_FRACTION * n_boot:
            out[key] = (NAN, NAN)
        else:
            lo, hi = np.percentile(np.asarray(kept), [100 * alpha / 2, 100 * (1 - alpha / 2)])
            out[key] = (float(lo), float(hi))
    return out


def evaluate_with_ci(probs: np.ndarray, targets: np.ndarray, classes: Sequence[str], patients: Sequence[Hashable],
                     studies: Sequence[Hashable] | None = None, multilabel: bool = False, n_boot: int = 1000,
                     seed: int = 0, thresholds: np.ndarray | None = None, n_jobs: int = 1) -> dict[str, Any]:
    """Image-level (and study-level) metrics with patient-bootstrap confidence intervals, JSON-serialisable.

    Args:
        probs: (N, C). targets: (N, C). classes: C names. patients: N patient ids. studies: N study ids or None.
        multilabel, thresholds: as in :func:`classification_metrics` (the thresholds also apply inside the CIs).
        n_boot, seed, n_jobs: of :func:`bootstrap_ci` (95 % intervals); ``n_boot=0``: no intervals (``ci`` empty).

    Returns:
        ``{"image": classification_metrics(...) + {"ci": {metric: [lo, hi]}}, "n_boot": n_boot}`` and, when
        ``studies`` is given, ``"study"``: the same on :func:`aggregate_by_group` study predictions, resampling the
        patient of each study's first image. CI bounds are None where undefined.
    """
    p, t = as_arrays(probs, targets)
    fn = scalar_metrics(multilabel, thresholds)

    def level(pl: np.ndarray, tl: np.ndarray, pats: Sequence[Hashable]) -> dict[str, Any]:
        """Metrics of one level (image or study) with bootstrap CIs over ``pats``."""
        res = classification_metrics(pl, tl, classes, multilabel, thresholds)
        res["ci"] = {} if n_boot == 0 else to_jsonable(bootstrap_ci(pl, tl, pats, fn, n_boot=n_boot, seed=seed,
                                                                    n_jobs=n_jobs))  # n_boot 0: no intervals
        return res

    out: dict[str, Any] = {"image": level(p, t, patients)}
    if studies is not None:
        if len(studies) != len(patients):
            raise ValueError(f"{len(studies)} study ids for {len(patients)} patient ids")
        p_s, t_s, study_ids = aggregate_by_group(p, t, studies, multilabel=multilabel)
        first_patient: dict[Any, Any] = {}
        for s, pat in zip(studies, patients, strict=True):
            first_patient.setdefault(s, pat)
        out["study"] = level(p_s, t_s, [first_patient[s] for s in study_ids])
    out["n_boot"] = n_boot
    return out


def paired_seed_bootstrap(a: Sequence[np.ndarray], b: Sequence[np.ndarray], targets: np.ndarray,
                          patients: Sequence[Hashable], metric_fn: MetricFn, n_boot: int = 1000, seed: int = 0,
                          alpha: float = 0.05) -> dict[str, tuple[float, float, float]]:
    """Mean difference of a metric between two methods over training seeds, with a CI carrying seed AND test noise.

    ``a[s]`` and ``b[s]`` are the (N, C) probabilities of methods A and B trained with the s-th seed, on the same N
    test rows (images or studies). Each resample draws the seeds with replacement and the patients with replacement
    (all rows of a drawn patient, one draw shared by A and B), and takes the mean over the drawn seeds of
    ``metric(A_s) - metric(B_s)`` on those rows: a two-level (seeds, then patients) percentile bootstrap.

    Args:
        a, b: S arrays each, (N, C), paired by seed. targets: (N, C). patients: N patient ids.
        metric_fn: (probs, targets) -> flat dict of floats, e.g. ``scalar_metrics(False)``.
        n_boot, seed, alpha: resamples, RNG seed, 1 - confidence level.

    Returns:
        ``{key: (mean difference on the full test rows, lower, upper)}``; (mean, nan, nan) when fewer than
        ``MIN_VALID_FRACTION`` of the resamples define the metric.
    """
    if len(a) != len(b) or not len(a):
        raise ValueError(f"need the same number (>= 1) of runs per method, got {len(a)} and {len(b)}")
    t = np.asarray(targets)
    if any(x.shape != (len(t), t.shape[1]) for x in (*a, *b)):
        raise ValueError("every run needs probabilities for the same test rows as the targets")
    codes, ids = first_appearance_codes(patients)
    rows_by_patient = np.argsort(codes, kind="stable")
    count = np.bincount(codes, minlength=len(ids))
    start = np.concatenate(([0], np.cumsum(count)[:-1]))
    rng = np.random.default_rng(seed)
    full = [{k: v - mb.get(k, NAN) for k, v in metric_fn(pa, t).items()} for pa, mb in
            zip(a, (metric_fn(pb, t) for pb in b), strict=True)]
    point = {k: float(np.nanmean([f[k] for f in full])) for k in full[0]}
    draws: dict[str, list[float]] = {k: [] for k in point}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(n_boot):
            drawn = rng.integers(0, len(ids), size=len(ids))
            lengths = count[drawn]
            ends = np.cumsum(lengths)
            rows = rows_by_patient[np.repeat(start[drawn] - (ends - lengths), lengths) + np.arange(ends[-1])]
            picked = rng.integers(0, len(a), size=len(a))
            diffs: dict[str, list[float]] = {k: [] for k in point}
            for s in np.unique(picked):
                ma, mb = metric_fn(a[s][rows], t[rows]), metric_fn(b[s][rows], t[rows])
                for k in point:
                    diffs[k] += [float(ma.get(k, NAN)) - float(mb.get(k, NAN))] * int((picked == s).sum())
            for k, v in diffs.items():
                m = float(np.mean(v))
                if math.isfinite(m):
                    draws[k].append(m)
    out: dict[str, tuple[float, float, float]] = {}
    for k, kept in draws.items():
        if len(kept) < MIN_VALID_FRACTION * n_boot:
            out[k] = (point[k], NAN, NAN)
        else:
            lo, hi = np.percentile(np.asarray(kept), [100 * alpha / 2, 100 * (1 - alpha / 2)])
            out[k] = (point[k], float(lo), float(hi))
    return out
