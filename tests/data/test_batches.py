from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deeppneumonia.data.batches import CachedSplit
from deeppneumonia.data.cache import build_cache
from deeppneumonia.data.sources import load_source
from tests.conftest import make_lesion_csv


@pytest.fixture
def split(tmp_path: Path) -> CachedSplit:
    manifest = load_source(make_lesion_csv(tmp_path / "d", n=20, size=32), "csv")
    cache = build_cache(manifest, 32, tmp_path / "cache", progress=False)
    return CachedSplit(cache, np.arange(3, 19))


def _all(split: CachedSplit, **kw) -> list:  # type: ignore[no-untyped-def]
    return list(split.iterate(4, shuffle=True, seed=5, drop_last=True, **kw))


def test_resident_images_give_the_same_batches(split: CachedSplit) -> None:
    before = _all(split)
    split.keep_on(torch.device("cpu"))
    assert split.resident is not None and split.resident.dtype == torch.uint8
    after = _all(split)
    assert len(before) == len(after) == 4
    for a, b in zip(before, after, strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.index, b.index) and torch.equal(a.boxes, b.boxes)


def test_epoch_covers_each_image_once_in_a_seeded_order(split: CachedSplit) -> None:
    seen = torch.cat([b.index for b in _all(split)])
    assert len(set(seen.tolist())) == 16 and set(seen.tolist()) == set(split.indices.tolist())
    other = torch.cat([b.index for b in split.iterate(4, shuffle=True, seed=6, drop_last=True)])
    assert not torch.equal(seen, other)


def test_sharding_needs_a_divisible_global_batch(split: CachedSplit, monkeypatch: pytest.MonkeyPatch) -> None:
    from deeppneumonia.runtime import distributed

    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    with pytest.raises(ValueError, match="divisible"):
        _all(split, shard=True)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    full = _all(split)
    half = list(split.iterate(4, shuffle=True, seed=5, drop_last=True, shard=True))
    for f, h in zip(full, half, strict=True):  # rank 1 gets the second half of each global batch's images
        assert set(h.index.tolist()) < set(f.index.tolist()) and len(h.index) == 2


def test_unlabelled_union_pools_images_of_several_caches(tmp_path: Path, split: CachedSplit) -> None:
    from deeppneumonia.data.batches import UnlabelledUnion

    other_m = load_source(make_lesion_csv(tmp_path / "o", n=10, size=40, seed=3), "csv")
    other = CachedSplit(build_cache(other_m, 32, tmp_path / "cache", progress=False), np.arange(10))
    pool = UnlabelledUnion([split, other])
    assert len(pool) == 26
    batches = list(pool.iterate(5, shuffle=True, seed=1, drop_last=True))
    assert len(batches) == 5 and all(b.images.shape == (5, 1, 32, 32) for b in batches)
    everything = torch.cat([pool.batch(np.arange(26)).images])
    mine = torch.cat([split.batch(np.arange(16)).images, other.batch(np.arange(10)).images])
    assert torch.equal(everything, mine)  # positions 0-15 are the split's, 16-25 the other cache's
