"""SIIM-FISABIO-RSNA COVID-19 Detection (2021) layout.

Files: ``train_study_level.csv`` (one-hot study labels), ``train_image_level.csv`` (image id, boxes in
ORIGINAL pixels as a Python-literal list of dicts, StudyInstanceUID), ``image_meta.csv`` (image id,
patient id, original width/height) and ``images/<image_id>.jpg``. Every image of a study shares its label.
Boxes are rescaled to the stored image's pixels. Citation: Lakhani et al., J Digit Imaging 2023.
"""

from __future__ import annotations

import ast
from pathlib import Path

from deeppneumonia.data.manifest import Box, Manifest, ProblemLog, Record, one_hot, validate_box
from deeppneumonia.data.sources._common import drop_duplicates, number, probe, read_csv

CLASSES = ("Negative for Pneumonia", "Typical Appearance", "Indeterminate Appearance", "Atypical Appearance")


def is_siim(root: Path) -> bool:
    """Whether ``root`` has both SIIM label files (study level and image level)."""
    return (root / "train_study_level.csv").is_file() and (root / "train_image_level.csv").is_file()


def _parse_boxes(text: str) -> list[dict[str, float]]:
    """Parse the `boxes` cell: a Python literal list of {'x','y','width','height'} (literal_eval: no code runs)."""
    if not text or text.lower() == "nan":
        return []
    value = ast.literal_eval(text)
    if not isinstance(value, list) or not all(isinstance(b, dict) for b in value):
        raise ValueError("expected a list of dicts")
    return [{k: float(b[k]) for k in ("x", "y", "width", "height")} for b in value]


def load_siim(root: Path, plog: ProblemLog, image_dir: str = "images") -> Manifest:
    """Read SIIM-FISABIO-RSNA at ``root`` into a 4-class manifest; images take their study's label.

    Images need a row in ``image_meta.csv`` (patient id, original size to scale the boxes); rows without one are reported.
    """
    study_csv, image_csv, meta_csv = (root / n for n in
                                      ("train_study_level.csv", "train_image_level.csv", "image_meta.csv"))
    study_label: dict[str, int] = {}
    for row_no, row in read_csv(study_csv, ["id", *CLASSES], plog):
        sid = row["id"].removesuffix("_study")
        try:
            values = [int(number(row[c], f"one-hot value of {c!r}")) for c in CLASSES]
        except ValueError as exc:
            plog.add("bad_label", f"one-hot values {[row[c] for c in CLASSES]}: {exc}", study_csv, row_no)
            continue
        if sorted(values) != [0] * (len(CLASSES) - 1) + [1]:
            plog.add("bad_label", f"study {sid} must have exactly one class set to 1, got {values}",
                     study_csv, row_no)
            continue
        study_label[sid] = values.index(1)

    meta: dict[str, tuple[str, float, float]] = {}
    if meta_csv.is_file():
        for row_no, row in read_csv(meta_csv, ["image_id", "patient_id", "original_width", "original_height"], plog):
            try:
                meta[row["image_id"]] = (row["patient_id"], number(row["original_width"], "original_width", positive=True),
                                         number(row["original_height"], "original_height", positive=True))
            except ValueError as exc:
                plog.add("bad_meta", f"{exc} (the original size scales the boxes)", meta_csv, row_no)

    records: list[Record] = []
    for row_no, row in read_csv(image_csv, ["id", "boxes", "StudyInstanceUID"], plog):
        image_id = row["id"].removesuffix("_image")
        study = row["StudyInstanceUID"]
        if study not in study_label:
            plog.add("unknown_study", f"image {image_id}: study {study} has no usable row in {study_csv.name}",
                     image_csv, row_no)
            continue
        if image_id not in meta:
            plog.add("missing_meta", f"image {image_id} has no row in {meta_csv.name} (patient id and original "
                     "size are needed for patient splits and box scaling)", image_csv, row_no)
            continue
        patient, ow, oh = meta[image_id]
        path = root / image_dir / f"{image_id}.jpg"
        info = probe(path, plog, image_csv, row_no)
        if info is None:
            continue
        try:
            raw = _parse_boxes(row["boxes"])
        except (ValueError, SyntaxError, KeyError, TypeError, RecursionError, MemoryError) as exc:
            plog.add("bad_box", f"cannot parse boxes {row['boxes'][:80]!r}: {exc}; image kept without boxes",
                     image_csv, row_no, "warning")
            raw = []
        sx, sy = info.width / ow, info.height / oh
        boxes = []
        for b in raw:
            box = validate_box(Box(b["x"], b["y"], b["width"], b["height"], "opacity").scaled(sx, sy),
                               info.width, info.height, plog, image_csv, row_no)
            if box is not None:
                boxes.append(box)
        records.append(Record(image_id, path, patient, study, one_hot(study_label[study], len(CLASSES)),
                              tuple(boxes), info.width, info.height, str(image_csv), row_no))
    records = drop_duplicates(records, plog)
    return Manifest(root.name, root, CLASSES, "multiclass", records, plog.problems)
