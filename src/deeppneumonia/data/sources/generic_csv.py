"""The generic CSV layout: one row per image, for any data set the other sources do not know.

Columns (header names exact; only ``path`` and one of ``label``/``labels`` are required):

- ``path``: the image file, relative to the CSV's folder (absolute paths and ``..`` are refused).
- ``label``: one class name (multi-class), or ``labels``: class names separated by ``|`` (multi-label;
  an empty cell means no finding). For multi-label, per-class columns may instead be given through the
  ``classes`` argument: each such column holds 1, 0 or empty/``nan`` (= unknown, masked out).
- ``patient_id`` (default: the path: each image its own patient, reported as a warning),
  ``study_id`` (default: the image itself: one image per study).
- ``boxes``: JSON list of ``[x, y, w, h]`` in the stored image's pixels, e.g. ``[[10, 20, 30, 40]]``.

Class order is ``classes`` when given (labels outside it are reported and skipped), else sorted names.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

from deeppneumonia.data.manifest import Box, Manifest, ProblemLog, Record, Task, one_hot, validate_box
from deeppneumonia.data.sources._common import drop_duplicates, open_csv, probe, safe_child
from deeppneumonia.errors import DataError


def _parse_boxes(text: str) -> list[Box]:
    """Boxes of a JSON ``[[x, y, w, h], ...]`` cell (empty cell: none); ValueError for another shape."""
    if not text:
        return []
    value = json.loads(text)
    if not isinstance(value, list) or not all(isinstance(b, list) and len(b) == 4 for b in value):
        raise ValueError("expected a JSON list of [x, y, w, h] lists")
    return [Box(float(b[0]), float(b[1]), float(b[2]), float(b[3])) for b in value]


def _cell_value(text: str) -> float:
    """A per-class cell as 1.0 / 0.0, or NaN for empty, ``nan``, ``-1`` or ``unknown``; ValueError otherwise."""
    if text.lower() in {"", "nan", "-1", "unknown"}:
        return math.nan
    v = float(text)
    if v not in (0.0, 1.0):
        raise ValueError(f"{text!r} is not 0, 1 or empty")
    return v


def load_generic_csv(csv_path: Path, plog: ProblemLog, classes: Sequence[str] | None = None) -> Manifest:
    """Read a data set in the generic CSV layout (see the module docstring) into a manifest.

    The task is multi-label with per-class columns (all of ``classes`` in the header) or a ``labels`` column,
    multi-class with a ``label`` column; DataError when ``path`` or every label column is missing.
    """
    root = csv_path.parent
    header, csv_rows = open_csv(csv_path, plog)
    if "path" not in header:
        raise DataError(f"{csv_path}: missing column(s) ['path']; the header has {header}")
    per_class_columns = classes is not None and all(c in header for c in classes)
    task: Task
    if per_class_columns:
        task = "multilabel"
    elif "label" in header:
        task = "multiclass"
    elif "labels" in header:
        task = "multilabel"
    else:
        raise DataError(f"{csv_path}: missing column(s) ['label'] (or 'labels', or one column per class of "
                        f"data.classes); the header has {header}")
    rows = []
    for row_no, row in csv_rows:
        if task == "multiclass":
            names = [row["label"]] if row["label"] else []
            if not names:
                plog.add("missing_label", "empty label", csv_path, row_no)
                continue
        elif not per_class_columns:
            names = [n.strip() for n in row["labels"].split("|") if n.strip()]
        else:
            names = []
        rows.append((row_no, row, names))
    if classes is None:
        classes = sorted({n for _, _, names in rows for n in names})
    classes = tuple(classes)
    records = []
    for row_no, row, names in rows:
        unknown = [n for n in names if n not in classes]
        if unknown:
            plog.add("unknown_label", f"label(s) {unknown} not among the classes {classes}", csv_path, row_no)
            continue
        if per_class_columns:
            try:
                target = tuple(_cell_value(row[c]) for c in classes)
            except ValueError as exc:
                plog.add("bad_label", str(exc), csv_path, row_no)
                continue
        elif task == "multiclass":
            target = one_hot(classes.index(names[0]), len(classes))
        else:
            target = tuple(1.0 if c in names else 0.0 for c in classes)
        path = safe_child(root, row["path"], plog, csv_path, row_no)
        if path is None:
            continue
        info = probe(path, plog, csv_path, row_no)
        if info is None:
            continue
        try:
            raw_boxes = _parse_boxes(row.get("boxes", ""))
        except (ValueError, TypeError, RecursionError) as exc:
            plog.add("bad_box", f"cannot parse boxes {row.get('boxes', '')[:80]!r}: {exc}; image kept without "
                     "boxes", csv_path, row_no, "warning")
            raw_boxes = []
        boxes = [b for b in (validate_box(b, info.width, info.height, plog, csv_path, row_no) for b in raw_boxes)
                 if b is not None]
        patient = row.get("patient_id") or row["path"]
        records.append(Record(row["path"], path, patient, row.get("study_id") or row["path"], target, tuple(boxes),
                              info.width, info.height, str(csv_path), row_no))
    if records and not any(row.get("patient_id") for _, row, _ in rows):
        plog.add("no_patient_id", "no patient_id column: each image is its own patient, so splits cannot keep "
                 "a patient's images together", csv_path, None, "warning")
    records = drop_duplicates(records, plog)
    return Manifest(csv_path.stem, root, classes, task, records, plog.problems)
