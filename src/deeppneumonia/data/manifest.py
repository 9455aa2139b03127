"""The manifest: one record per image with its patient, study, target vector and lesion boxes.

Every dataset source produces a :class:`Manifest`. The label model is a target *vector* over the source's
classes so that multi-class (one-hot) and multi-label (0/1 with NaN = unknown) share one shape.
Boxes are in the pixels of the image file as stored on disk.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from deeppneumonia.errors import DataError

log = logging.getLogger(__name__)

Task = Literal["multiclass", "multilabel"]
Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Box:
    """An axis-aligned lesion box in stored-image pixels: top-left (x, y), width w, height h."""

    x: float
    y: float
    w: float
    h: float
    label: str | None = None

    @property
    def x2(self) -> float:
        return self.x + self.w

    @property
    def y2(self) -> float:
        return self.y + self.h

    def scaled(self, sx: float, sy: float, dx: float = 0.0, dy: float = 0.0) -> Box:
        """The box after the image is scaled by (sx, sy) and shifted by (dx, dy)."""
        return Box(self.x * sx + dx, self.y * sy + dy, self.w * sx, self.h * sy, self.label)


@dataclass(frozen=True)
class Record:
    """One image of a manifest.

    ``target`` holds one value per class of the manifest: one-hot for multi-class, 0/1/NaN (unknown)
    for multi-label. ``source_file``/``source_row`` say where the record came from (row numbers count
    the header as row 1, as a spreadsheet does).
    """

    image_id: str
    path: Path
    patient_id: str
    study_id: str
    target: tuple[float, ...]
    boxes: tuple[Box, ...] = ()
    width: int | None = None
    height: int | None = None
    source_file: str = ""
    source_row: int | None = None

    @property
    def label_index(self) -> int:
        """The class index of a multi-class record (argmax of the one-hot target)."""
        return int(np.argmax(np.asarray(self.target)))


@dataclass(frozen=True)
class Problem:
    """Something wrong in the input, with where it is. ``error`` records are skipped; ``warning`` kept."""

    kind: str
    message: str
    file: str
    row: int | None = None
    severity: Severity = "error"

    def __str__(self) -> str:
        """``[severity] kind: file[:row]: message``."""
        where = self.file if self.row is None else f"{self.file}:{self.row}"
        return f"[{self.severity}] {self.kind}: {where}: {self.message}"


class ProblemLog:
    """Collects problems while a source is read; under ``strict`` the first error raises."""

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self.problems: list[Problem] = []

    def add(
        self, kind: str, message: str, file: str | Path, row: int | None = None, severity: Severity = "error"
    ) -> None:
        """Record a problem; under ``strict`` an error raises DataError instead."""
        problem = Problem(kind, message, str(file), row, severity)
        if self.strict and severity == "error":
            raise DataError(f"{problem} (strict mode: fix the input or drop --strict to skip it)")
        log.debug("%s", problem)
        self.problems.append(problem)


def one_hot(index: int, n: int) -> tuple[float, ...]:
    """A one-hot target of length ``n`` with 1 at ``index``."""
    return tuple(1.0 if i == index else 0.0 for i in range(n))


@dataclass
class Manifest:
    """All usable records of a dataset plus every problem met while reading it."""

    name: str
    root: Path
    classes: tuple[str, ...]
    task: Task
    records: list[Record]
    problems: list[Problem] = field(default_factory=list)

    def __len__(self) -> int:
        """Number of records."""
        return len(self.records)

    def __post_init__(self) -> None:
        """Raise DataError on duplicate image ids or a target whose length is not the number of classes."""
        ids = Counter(r.image_id for r in self.records)
        dup = [i for i, c in ids.items() if c > 1]
        if dup:
            raise DataError(f"{self.name}: duplicate image ids {dup[:5]} (each image must appear once)")
        for r in self.records:
            if len(r.target) != len(self.classes):
                raise DataError(f"{r.source_file}:{r.source_row}: target has {len(r.target)} values, "
                                f"expected one per class {self.classes}")

    def targets(self) -> np.ndarray:
        """(N, C) float32 array of targets (NaN = unknown)."""
        if not self.records:
            return np.zeros((0, len(self.classes)), np.float32)
        return np.asarray([r.target for r in self.records], dtype=np.float32)

    def label_indices(self) -> np.ndarray:
        """(N,) int64 class indices; multi-class only."""
        if self.task != "multiclass":
            raise DataError(f"{self.name} is multi-label: it has no single class index per image")
        return np.asarray([r.label_index for r in self.records], dtype=np.int64)

    def class_counts(self) -> dict[str, int]:
        """Images per class (positives per finding for multi-label)."""
        t = self.targets()
        return {c: int(np.nansum(t[:, i] == 1)) for i, c in enumerate(self.classes)}

    def study_class_counts(self) -> dict[str, int]:
        """Studies per class: a study counts for a class when any of its images is positive."""
        by_study: dict[str, np.ndarray] = {}
        for r in self.records:
            v = np.nan_to_num(np.asarray(r.target, np.float32), nan=0.0)
            by_study[r.study_id] = np.maximum(by_study.get(r.study_id, v), v)
        totals = np.sum(list(by_study.values()), axis=0) if by_study else np.zeros(len(self.classes))
        return {c: int(totals[i]) for i, c in enumerate(self.classes)}

    def subset(self, indices: Iterable[int], name: str | None = None) -> Manifest:
        """A manifest holding only the given records (problems are not carried over)."""
        return Manifest(name or self.name, self.root, self.classes, self.task,
                        [self.records[i] for i in indices])

    def patients(self) -> list[str]:
        """The patient id of every record, in record order."""
        return [r.patient_id for r in self.records]

    def stratify_labels(self) -> np.ndarray:
        """One integer per record used to stratify splits: the class, or the rarest positive finding."""
        if self.task == "multiclass":
            return self.label_indices()
        t = np.nan_to_num(self.targets(), nan=0.0)
        freq = t.sum(0)
        out = np.full(len(t), len(self.classes), dtype=np.int64)  # len(classes) = no positive finding
        for i, row in enumerate(t):
            pos = np.flatnonzero(row == 1)
            if pos.size:
                out[i] = int(pos[np.argmin(freq[pos])])
        return out


def validate_box(
    box: Box, width: int | None, height: int | None, plog: ProblemLog, file: str | Path, row: int | None
) -> Box | None:
    """Check a box against the stored image size: clip boxes that overhang, drop empty or outside ones."""
    values = (box.x, box.y, box.w, box.h)
    if not all(math.isfinite(v) for v in values):
        plog.add("bad_box", f"box {values} has a non-finite coordinate; box dropped", file, row, "warning")
        return None
    if box.w <= 0 or box.h <= 0:
        plog.add("bad_box", f"box {values} has no area (w, h must be > 0); box dropped", file, row, "warning")
        return None
    if width is None or height is None:
        return box
    x1, y1 = max(box.x, 0.0), max(box.y, 0.0)
    x2, y2 = min(box.x2, float(width)), min(box.y2, float(height))
    if x2 <= x1 or y2 <= y1:
        plog.add("box_outside_image", f"box {values} lies outside the {width}x{height} image; box dropped",
                 file, row, "warning")
        return None
    if (x1, y1, x2, y2) != (box.x, box.y, box.x2, box.y2):
        plog.add("box_clipped", f"box {values} overhangs the {width}x{height} image; clipped to it",
                 file, row, "warning")
    return Box(x1, y1, x2 - x1, y2 - y1, box.label)


def summarize_counts(values: Sequence[str]) -> dict[str, int]:
    """Occurrences of each value, sorted by value."""
    return dict(sorted(Counter(values).items()))
