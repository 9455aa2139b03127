"""Helpers shared by the dataset sources: CSV reading with row numbers, image probing with reporting."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from deeppneumonia.data.imageio import ImageInfo, probe_image
from deeppneumonia.data.manifest import ProblemLog, Record
from deeppneumonia.errors import DataError, ImageReadError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".dcm", ".dicom"}


def read_csv(path: Path, required: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (row number, row) from a CSV; row numbers count the header as row 1.

    Raises DataError naming the file and the missing columns when the header lacks a required one.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        missing = [c for c in required if c not in header]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}; the header has {header}")
        for i, row in enumerate(reader, start=2):
            yield i, {k: (v or "").strip() for k, v in row.items() if k is not None}


def probe(path: Path, plog: ProblemLog, file: str | Path, row: int | None) -> ImageInfo | None:
    """Read an image header; report (and return None for) missing, empty or unreadable files."""
    try:
        return probe_image(path)
    except ImageReadError as exc:
        kind = "missing_file" if not path.exists() else "unreadable_image"
        plog.add(kind, str(exc), file, row)
        return None


def safe_child(root: Path, relative: str, plog: ProblemLog, file: str | Path, row: int | None) -> Path | None:
    """Resolve a path named in a CSV relative to its folder; refuse absolute paths and '..' escapes."""
    p = Path(relative)
    if not relative or p.is_absolute() or ".." in p.parts:
        plog.add("bad_path", f"path {relative!r} must be relative to {root} and stay inside it", file, row)
        return None
    return root / p


_KERMANY_PATTERNS = (
    re.compile(r"^(person\d+)_"),  # person123_bacteria_456.jpeg
    re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+"),  # IM-0115-0001.jpeg, NORMAL2-IM-1427-0001.jpeg
)


def patient_from_filename(stem: str, pattern: re.Pattern[str] | None = None) -> str | None:
    """Patient id from a file name: the user's regex (first group) or the Kermany naming conventions."""
    for pat in (pattern,) if pattern is not None else _KERMANY_PATTERNS:
        m = pat.match(stem)
        if m:
            return m.group(1)
    return None


def drop_duplicates(records: list[Record], plog: ProblemLog) -> list[Record]:
    """Keep the first record of each image id; report the later ones with their row."""
    seen: set[str] = set()
    out = []
    for r in records:
        if r.image_id in seen:
            plog.add("duplicate", f"image {r.image_id} is listed more than once; this row is skipped",
                     r.source_file, r.source_row)
            continue
        seen.add(r.image_id)
        out.append(r)
    return out
