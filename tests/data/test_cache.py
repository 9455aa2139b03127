from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from deeppneumonia.data.cache import build_cache, geometry
from deeppneumonia.data.manifest import Box
from deeppneumonia.data.sources import load_source
from tests.conftest import make_lesion_csv


def test_build_reuse_and_rebuild(tmp_path: Path) -> None:
    csv_path = make_lesion_csv(tmp_path / "d", n=10, size=40)
    m = load_source(csv_path)
    c1 = build_cache(m, 32, tmp_path / "cache", workers=1, progress=False)
    assert c1.images.shape == (10, 32, 32) and c1.images.dtype == np.uint8 and c1.valid.all()
    assert isinstance(c1.images, np.memmap)
    stamp = (c1.path / "images.npy").stat().st_mtime_ns
    c2 = build_cache(load_source(csv_path), 32, tmp_path / "cache", workers=1, progress=False)
    assert c2.path == c1.path and (c2.path / "images.npy").stat().st_mtime_ns == stamp  # reused
    c3 = build_cache(m, 24, tmp_path / "cache", workers=1, progress=False)
    assert c3.path != c1.path  # another size: another cache
    first = m.records[0].path
    os.utime(first, ns=(1, 1))  # the source changed
    c4 = build_cache(load_source(csv_path), 32, tmp_path / "cache", workers=1, progress=False)
    assert c4.path != c1.path
    assert not list((tmp_path / "cache").glob(".*tmp*"))  # no temporary folders left behind


def test_undecodable_image_is_reported_and_marked_invalid(tmp_path: Path) -> None:
    csv_path = make_lesion_csv(tmp_path / "d", n=6, size=40)
    m = load_source(csv_path)
    victim = m.records[2].path
    victim.write_bytes(victim.read_bytes()[:60])  # truncated after the header was probed
    cache = build_cache(m, 16, tmp_path / "cache", workers=1, progress=False)
    assert cache.valid.tolist() == [True, True, False, True, True, True]
    (p,) = [p for p in m.problems if p.kind == "unreadable_image"]
    assert p.file.endswith("labels.csv") and p.row == 4


def test_pixels_and_boxes_in_cache_space(tmp_path: Path) -> None:
    csv_path = make_lesion_csv(tmp_path / "d", n=4, size=64)
    m = load_source(csv_path)
    cache = build_cache(m, 32, tmp_path / "cache", workers=1, progress=False)
    i = next(i for i, r in enumerate(m.records) if r.boxes)
    (b,) = cache.boxes(i)
    img = cache.images[i].astype(float)
    inside = img[int(b.y) + 1:int(b.y2) - 1, int(b.x) + 1:int(b.x2) - 1].mean()
    assert inside > img.mean() + 30  # the bright lesion sits where the scaled box says


@pytest.mark.parametrize("mode", ["squash", "letterbox"])
def test_geometry_maps_corners(mode: str) -> None:
    sx, sy, dx, dy = geometry(200, 100, 50, mode)
    b = Box(0, 0, 200, 100).scaled(sx, sy, dx, dy)
    if mode == "squash":
        assert (b.x, b.y, b.w, b.h) == (0, 0, 50, 50)
    else:
        assert (b.x, b.w) == (0, 50) and b.h == 25 and b.y == pytest.approx(12)


def test_mixed_formats_in_a_folder_layout_are_cached(tmp_path: Path) -> None:
    """DICOM (MONOCHROME1, 12-bit), 16-bit PNG and RGB JPEG side by side, as a hospital export may hold."""
    from PIL import Image

    from tests.data.readers.test_dicom import _dicom_dataset, _ramp12, _save_dicom

    root = tmp_path / "mixed"
    (root / "A").mkdir(parents=True)
    (root / "B").mkdir()
    _save_dicom(_dicom_dataset(_ramp12(32, 32), photometric="MONOCHROME1"), root / "A" / "scan.dcm")
    Image.fromarray((np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)).save(root / "A" / "deep.png")
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(root / "B" / "colour.jpg")
    m = load_source(root)
    assert len(m) == 3 and [p.kind for p in m.problems] == ["no_patient_id"]
    cache = build_cache(m, 16, tmp_path / "cache", workers=1, progress=False)
    assert cache.valid.all()
    dcm = cache.images[[r.image_id for r in m.records].index("A/scan.dcm")].astype(int)
    assert dcm[0, 0] > dcm[-1, -1]  # MONOCHROME1: the low raw values are drawn bright
