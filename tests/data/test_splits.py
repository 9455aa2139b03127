from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deeppneumonia.data.manifest import Manifest, Record, one_hot
from deeppneumonia.data.splits import check_no_leakage, patient_kfold, patient_split
from deeppneumonia.errors import DataError


def manifest(n_patients: int = 60, per_patient: int = 3) -> Manifest:
    rng = np.random.default_rng(0)
    recs = []
    for p in range(n_patients):
        label = int(rng.integers(0, 3))
        for k in range(int(rng.integers(1, per_patient + 1))):
            recs.append(Record(f"p{p}_{k}", Path("x"), f"p{p}", f"p{p}", one_hot(label, 3)))
    return Manifest("m", Path("."), ("a", "b", "c"), "multiclass", recs)


def test_patient_split_is_disjoint_and_complete() -> None:
    m = manifest()
    s = patient_split(m, 0.15, 0.2, seed=3)
    parts = s.parts()
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(len(m)))
    pats = {k: {m.records[i].patient_id for i in v} for k, v in parts.items()}
    assert not (pats["train"] & pats["val"]) and not (pats["train"] & pats["test"]) and not (pats["val"] & pats["test"])
    assert 0.1 < len(s.test) / len(m) < 0.3 and 0.05 < len(s.val) / len(m) < 0.25


def test_split_is_reproducible_and_seed_dependent() -> None:
    m = manifest()
    a, b, c = patient_split(m, seed=1), patient_split(m, seed=1), patient_split(m, seed=2)
    assert np.array_equal(a.test, b.test) and not np.array_equal(a.test, c.test)


def test_kfold_partitions_patients() -> None:
    m = manifest()
    folds = patient_kfold(m, 5, seed=0)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(m)))
    with pytest.raises(DataError):
        patient_kfold(m, 1)


def test_leakage_is_detected() -> None:
    m = manifest()
    with pytest.raises(DataError, match="patient leakage"):
        check_no_leakage(m, {"train": [0, 1], "test": [1]})
