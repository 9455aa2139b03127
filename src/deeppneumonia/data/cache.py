"""The preprocessing cache: decode every image once, resize it to the working size, keep it as uint8.

A cache is a folder ``<cache_dir>/<name>-<size>px-<resize>-<fingerprint>/`` holding ``images.npy``
((N, S, S) uint8, memory-mapped when read, so it is never loaded whole into memory) and ``index.json``
(image ids, which images decoded, the problems met). The fingerprint hashes the format version, size,
resize mode and each image's path, byte size and modification time: a run with the same source and size
reuses the cache; any change to them builds a new one. Building writes into a temporary folder that is
renamed into place at the end, so a killed build leaves no half cache behind.

Resize modes: ``squash`` scales each axis to S (what the paper does: 1024x1024 -> 224x224; the SIIM
images are already square) and ``letterbox`` keeps the aspect ratio and pads with black.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from deeppneumonia.data.imageio import read_image
from deeppneumonia.data.manifest import Box, Manifest, Problem, Record
from deeppneumonia.errors import DataError, ImageReadError

log = logging.getLogger(__name__)

CACHE_VERSION = 1
ResizeMode = Literal["squash", "letterbox"]


def geometry(width: int, height: int, size: int, mode: str) -> tuple[float, float, float, float]:
    """(sx, sy, dx, dy): how stored-image pixels map to cache pixels."""
    if mode == "squash":
        return size / width, size / height, 0.0, 0.0
    if mode == "letterbox":
        s = size / max(width, height)
        nw, nh = _letterbox_dims(width, height, size)
        return s, s, float((size - nw) // 2), float((size - nh) // 2)
    raise DataError(f"unknown resize mode {mode!r}; choose 'squash' or 'letterbox'")


def _letterbox_dims(width: int, height: int, size: int) -> tuple[int, int]:
    """The letterboxed image's size: the aspect ratio kept, at least 1 pixel per side (a 1x300 image at 32 px)."""
    s = size / max(width, height)
    return max(1, min(size, round(width * s))), max(1, min(size, round(height * s)))


def resize_image(pixels: np.ndarray, size: int, mode: str) -> np.ndarray:
    """(H, W) float [0, 1] -> (size, size) uint8, antialiased (PIL bilinear with a scaled support)."""
    h, w = pixels.shape
    img = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.float32), mode="F")
    if mode == "squash":
        out = np.asarray(img.resize((size, size), Image.Resampling.BILINEAR))
    else:
        _, _, dx, dy = geometry(w, h, size, mode)
        nw, nh = _letterbox_dims(w, h, size)
        small = np.asarray(img.resize((nw, nh), Image.Resampling.BILINEAR))
        out = np.zeros((size, size), np.float32)
        out[int(dy):int(dy) + nh, int(dx):int(dx) + nw] = small
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def _decode(args: tuple[str, int, str]) -> tuple[np.ndarray | None, str | None]:
    """Worker job (path, size, mode) -> (cache image, None), or (None, error message) when decoding fails."""
    path, size, mode = args
    try:
        return resize_image(read_image(path).pixels, size, mode), None
    except ImageReadError as exc:
        return None, str(exc)


def fingerprint(manifest: Manifest, size: int, mode: str) -> str:
    """16-hex-digit hash of the cache version, size, mode and each record's id, path, byte size and mtime."""
    h = hashlib.sha256(f"v{CACHE_VERSION}|{size}|{mode}".encode())
    for r in manifest.records:
        try:
            st = r.path.stat()
            stamp = f"{st.st_size}|{st.st_mtime_ns}"
        except OSError:
            stamp = "missing"
        h.update(f"|{r.image_id}|{r.path}|{stamp}".encode())
    return h.hexdigest()[:16]


@dataclass
class Cache:
    """A built cache: ``images[i]`` is the (S, S) uint8 image of ``manifest.records[i]``."""

    path: Path
    manifest: Manifest
    images: np.ndarray
    valid: np.ndarray
    size: int
    mode: str
    problems: list[Problem]

    def boxes(self, i: int) -> tuple[Box, ...]:
        """Boxes of record ``i`` in cache pixels."""
        r = self.manifest.records[i]
        if not r.boxes or r.width is None or r.height is None:
            return ()
        sx, sy, dx, dy = geometry(r.width, r.height, self.size, self.mode)
        return tuple(b.scaled(sx, sy, dx, dy) for b in r.boxes)

    def valid_indices(self) -> np.ndarray:
        """Indices of the records whose image decoded."""
        return np.flatnonzero(self.valid)


def _open(path: Path, manifest: Manifest) -> Cache:
    """Open a built cache folder (images memory-mapped); DataError when its index does not match ``manifest``."""
    index = json.loads((path / "index.json").read_text())
    if index["image_ids"] != [r.image_id for r in manifest.records]:
        raise DataError(f"{path}: cache index does not match the manifest; delete the folder to rebuild")
    images = np.load(path / "images.npy", mmap_mode="r")
    problems = [Problem(**p) for p in index["problems"]]
    return Cache(path, manifest, images, np.asarray(index["valid"], bool), index["size"], index["mode"], problems)


def build_cache(manifest: Manifest, size: int, cache_dir: str | Path, mode: str = "squash",
                workers: int | None = None, progress: bool = True) -> Cache:
    """Return the cache of ``manifest`` at ``size``, building it (in parallel) unless an identical one exists.

    Images that fail to decode are reported as problems (file and row) and marked invalid; they are never
    given to training. Problems are also appended to ``manifest.problems``.
    """
    geometry(1, 1, size, mode)  # validates mode
    if not 8 <= size <= 4096:
        raise DataError(f"cache size {size} px is outside 8..4096")
    fp = fingerprint(manifest, size, mode)
    path = Path(cache_dir).expanduser() / f"{manifest.name}-{size}px-{mode}-{fp}"
    if (path / "index.json").is_file():
        log.info("reusing cache %s", path)
        cache = _open(path, manifest)
        manifest.problems.extend(p for p in cache.problems if p not in manifest.problems)
        return cache
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    n = len(manifest.records)
    arr = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(n, size, size))
    valid = np.zeros(n, bool)
    problems: list[Problem] = []
    workers = workers or min(os.cpu_count() or 1, 8)
    jobs = [(str(r.path), size, mode) for r in manifest.records]
    bar = tqdm(total=n, desc=f"caching {manifest.name} at {size}px", unit="img", disable=not progress)
    results = _map(jobs, workers)
    for i, (img, err) in enumerate(results):
        rec: Record = manifest.records[i]
        if img is None:
            problems.append(Problem("unreadable_image", err or "decode failed", rec.source_file, rec.source_row))
        else:
            arr[i] = img
            valid[i] = True
        bar.update(1)
    bar.close()
    arr.flush()
    del arr
    index = {"version": CACHE_VERSION, "fingerprint": fp, "size": size, "mode": mode,
             "image_ids": [r.image_id for r in manifest.records], "valid": valid.tolist(),
             "problems": [p.__dict__ for p in problems]}
    (tmp / "index.json").write_text(json.dumps(index))
    try:
        os.replace(tmp, path)
    except OSError:  # another process built the same cache first: use theirs
        shutil.rmtree(tmp, ignore_errors=True)
    manifest.problems.extend(problems)
    if problems:
        log.warning("%d image(s) could not be decoded and are skipped; see the problems list", len(problems))
    return _open(path, manifest)


def _map(jobs: Sequence[tuple[str, int, str]], workers: int) -> Iterator[tuple[np.ndarray | None, str | None]]:
    """Decode ``jobs`` in order: in-process for one worker or under 64 jobs, else in a process pool."""
    if workers <= 1 or len(jobs) < 64:
        yield from map(_decode, jobs)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_decode, jobs, chunksize=32)
