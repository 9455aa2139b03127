"""NIH ChestX-ray14 layout (Wang et al., CVPR 2017): ``labels.csv`` in Data_Entry_2017 form + ``boxes.csv``.

``labels.csv``: ``Image Index``, ``Finding Labels`` (findings separated by ``|``, or ``No Finding``),
``Patient ID``, ``View Position`` (the original header splits ``OriginalImage[Width,Height]`` in two).
``boxes.csv``: ``Image Index, Finding Label, x, y, w, h`` in the stored images' pixels. Box labels may
name findings outside the 14 (ChestX-Det adds e.g. Fracture): such boxes are kept as lesion boxes.

``mode="multilabel"`` (default) gives the 14 findings as a 0/1 vector; ``mode="binary"`` gives the
two classes ``No Finding`` / ``Finding`` (any finding), a multi-class task usable by every method.
The official file names are read as well: ``Data_Entry_2017.csv`` (or ``Data_Entry_2017_v2020.csv``) for
``labels.csv`` and ``BBox_List_2017.csv`` (columns ``Bbox [x``, ``y``, ``w``, ``h]``) for ``boxes.csv``.
NIH states no restriction on use; cite Wang et al. 2017.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Literal

from deeppneumonia.data.manifest import Box, Manifest, ProblemLog, Record, one_hot, validate_box
from deeppneumonia.data.sources._common import drop_duplicates, probe, read_csv, read_header, safe_child

FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
            "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening", "Hernia")
NO_FINDING = "No Finding"


LABEL_FILES = ("labels.csv", "Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
BOX_FILES = ("boxes.csv", "BBox_List_2017.csv")
OFFICIAL_BOX_COLUMNS = {"x": "Bbox [x", "y": "y", "w": "w", "h": "h]"}


def _first(root: Path, names: tuple[str, ...]) -> Path:
    """The first of ``names`` that is a file under ``root`` (the first name when none is)."""
    return next((root / n for n in names if (root / n).is_file()), root / names[0])


def is_nih(root: Path) -> bool:
    """Whether ``root`` has an NIH label file with a ``Finding Labels`` column."""
    labels = _first(root, LABEL_FILES)
    if not labels.is_file():
        return False
    return "Finding Labels" in read_header(labels)


def load_nih(root: Path, plog: ProblemLog, mode: Literal["multilabel", "binary"] = "multilabel",
             image_dir: str = "images") -> Manifest:
    """Read NIH ChestX-ray14 at ``root`` into a manifest (see the module docstring for ``mode``).

    Each image is its own study; boxes are validated against the image, and boxes of images without a usable
    label row are reported as orphans.
    """
    labels_csv, boxes_csv = _first(root, LABEL_FILES), _first(root, BOX_FILES)
    boxes: dict[str, list[tuple[int, Box]]] = defaultdict(list)
    if boxes_csv.is_file():
        official = boxes_csv.name == "BBox_List_2017.csv"
        cols = OFFICIAL_BOX_COLUMNS if official else {k: k for k in "xywh"}
        for row_no, row in read_csv(boxes_csv, ["Image Index", "Finding Label", *cols.values()], plog):
            row = {**row, **{k: row[c] for k, c in cols.items()}}
            try:
                b = Box(float(row["x"]), float(row["y"]), float(row["w"]), float(row["h"]), row["Finding Label"])
            except ValueError:
                plog.add("bad_box", f"box values {[row[k] for k in 'xywh']} are not numbers", boxes_csv, row_no,
                         "warning")
                continue
            boxes[row["Image Index"]].append((row_no, b))
    classes = FINDINGS if mode == "multilabel" else (NO_FINDING, "Finding")
    records = []
    for row_no, row in read_csv(labels_csv, ["Image Index", "Finding Labels", "Patient ID"], plog):
        image_id = row["Image Index"]
        names = [n.strip() for n in row["Finding Labels"].split("|") if n.strip()]
        unknown = [n for n in names if n not in FINDINGS and n != NO_FINDING]
        if not names or unknown or (NO_FINDING in names and len(names) > 1):
            plog.add("unknown_label", f"finding labels {row['Finding Labels']!r} (unknown: {unknown}); "
                     f"expected findings among {FINDINGS} or {NO_FINDING!r}", labels_csv, row_no)
            continue
        if mode == "multilabel":
            target = tuple(1.0 if f in names else 0.0 for f in FINDINGS)
        else:
            target = one_hot(0 if names == [NO_FINDING] else 1, 2)
        path = safe_child(root / image_dir, image_id, plog, labels_csv, row_no)
        if path is None:
            continue
        info = probe(path, plog, labels_csv, row_no)
        if info is None:
            continue
        kept = []
        for b_row, b in boxes.pop(image_id, []):
            box = validate_box(b, info.width, info.height, plog, boxes_csv, b_row)
            if box is not None:
                kept.append(box)
        patient = row["Patient ID"] or image_id
        records.append(Record(image_id, path, patient, image_id, target, tuple(kept), info.width, info.height,
                              str(labels_csv), row_no))
    for image_id, rows in boxes.items():
        plog.add("orphan_box", f"box for {image_id}, which has no usable row in {labels_csv.name}; dropped",
                 boxes_csv, rows[0][0], "warning")
    records = drop_duplicates(records, plog)
    return Manifest(root.name, root, classes, "multilabel" if mode == "multilabel" else "multiclass",
                    records, plog.problems)
