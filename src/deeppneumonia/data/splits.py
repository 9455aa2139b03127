"""Patient-grouped splits: no patient's images ever fall on two sides of a split.

Splits are stratified by class (multi-class) or by the rarest positive finding (multi-label) with
scikit-learn's ``StratifiedGroupKFold``, so class proportions stay close across parts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from deeppneumonia.data.manifest import Manifest
from deeppneumonia.errors import DataError


@dataclass(frozen=True)
class Split:
    """Record indices of each part of a manifest."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def parts(self) -> dict[str, np.ndarray]:
        """The parts by name: ``train``, ``val``, ``test``."""
        return {"train": self.train, "val": self.val, "test": self.test}


def patient_kfold(manifest: Manifest, k: int, seed: int = 0) -> list[np.ndarray]:
    """Assign records to ``k`` patient-disjoint folds; returns the record indices of each fold."""
    n_patients = len(set(manifest.patients()))
    if k < 2 or k > n_patients:
        raise DataError(f"k={k} folds need 2 <= k <= the number of patients ({n_patients})")
    groups = np.asarray(manifest.patients())
    y = manifest.stratify_labels()
    # StratifiedGroupKFold warns when a class has fewer members than k; the split stays valid.
    folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    out = [test for _, test in folds.split(np.zeros(len(y)), y, groups)]
    check_no_leakage(manifest, {f"fold{i}": f for i, f in enumerate(out)})
    return out


def patient_split(manifest: Manifest, val: float = 0.15, test: float = 0.15, seed: int = 0) -> Split:
    """Train/val/test by patient with the given fractions (approximate: whole patients move together)."""
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise DataError(f"split fractions val={val}, test={test} must be in [0, 1) and sum below 1")
    idx = np.arange(len(manifest))
    test_idx = np.zeros(0, np.int64)
    if test > 0:
        folds = patient_kfold(manifest, max(2, round(1 / test)), seed)
        test_idx = folds[0]
    rest = np.setdiff1d(idx, test_idx)
    val_idx = np.zeros(0, np.int64)
    if val > 0:
        sub = manifest.subset(rest)
        folds = patient_kfold(sub, max(2, round((1 - test) / val)), seed + 1)
        val_idx = rest[folds[0]]
    train_idx = np.setdiff1d(rest, val_idx)
    split = Split(np.sort(train_idx), np.sort(val_idx), np.sort(test_idx))
    check_no_leakage(manifest, split.parts())
    return split


def check_no_leakage(manifest: Manifest, parts: Mapping[str, Sequence[int] | np.ndarray]) -> None:
    """Raise DataError naming the patients found in more than one part."""
    owner: dict[str, str] = {}
    leaks: list[str] = []
    for name, indices in parts.items():
        for i in indices:
            p = manifest.records[int(i)].patient_id
            if owner.setdefault(p, name) != name:
                leaks.append(f"{p} ({owner[p]} and {name})")
    if leaks:
        raise DataError(f"patient leakage across splits: {sorted(set(leaks))[:10]} ({len(leaks)} images)")
