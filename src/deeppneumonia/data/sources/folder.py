"""Class-per-folder layout (e.g. Kermany et al., Cell 2018: ``NORMAL/`` and ``PNEUMONIA/``).

``root/<CLASS>/*.{jpg,jpeg,png,dcm}``. If every sub-folder of ``root`` is itself a split folder
(train/val/test) holding class folders, all splits are read. The patient id comes from a regex over the
file name (first group); by default the Kermany conventions (``person123_...``, ``IM-0115-...``) are tried,
and an image whose name matches none is its own patient (reported once as a warning: patient-level
splits are then image-level for those images). Images carry no boxes.
"""

from __future__ import annotations

import re
from pathlib import Path

from deeppneumonia.data.manifest import Manifest, ProblemLog, Record, one_hot
from deeppneumonia.data.sources._common import IMAGE_SUFFIXES, patient_from_filename, probe

SPLIT_NAMES = {"train", "val", "valid", "validation", "test"}


def _class_dirs(root: Path) -> list[Path]:
    """The visible sub-folders of ``root``, sorted."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def is_folder_layout(root: Path) -> bool:
    """Whether ``root`` has a sub-folder holding images, directly or under train/val/test folders."""
    dirs = _class_dirs(root) if root.is_dir() else []
    if not dirs:
        return False
    if all(d.name.lower() in SPLIT_NAMES for d in dirs):
        return any(is_folder_layout(d) for d in dirs)
    def images_in(d: Path) -> bool:
        try:
            return any(f.suffix.lower() in IMAGE_SUFFIXES for f in d.iterdir())
        except OSError:  # an unreadable folder is reported when the data set is read
            return False

    return any(images_in(d) for d in dirs)


def load_folder(root: Path, plog: ProblemLog, patient_regex: str | None = None) -> Manifest:
    """Read a class-per-folder data set (all split folders when present) into a multi-class manifest.

    Classes are the sorted folder names. ``patient_regex`` (first group = patient id) replaces the Kermany
    conventions; an image it does not match is its own patient (one warning for all of them).
    """
    dirs = _class_dirs(root)
    split_dirs = dirs if dirs and all(d.name.lower() in SPLIT_NAMES for d in dirs) else [root]
    classes = sorted({c.name for s in split_dirs for c in _class_dirs(s)})
    pattern = re.compile(patient_regex) if patient_regex else None
    records: list[Record] = []
    unmatched = 0
    for split in split_dirs:
        for cdir in _class_dirs(split):
            before = len(records)
            try:
                entries = sorted(cdir.iterdir())
            except OSError as exc:
                plog.add("unreadable_folder", f"cannot list class folder {cdir.name!r}: {exc}", cdir, None)
                continue
            for path in entries:
                if path.is_dir() or path.name.startswith("."):
                    continue
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    plog.add("not_an_image", f"{path.name}: unexpected file type {path.suffix!r} in a class folder",
                             path, None, "warning")
                    continue
                info = probe(path, plog, path, None)
                if info is None:
                    continue
                patient = patient_from_filename(path.stem, pattern)
                if patient is None:
                    unmatched += 1
                    patient = f"{cdir.name}/{path.stem}"
                rel = path.relative_to(root).as_posix()
                records.append(Record(rel, path, patient, rel, one_hot(classes.index(cdir.name), len(classes)),
                                      (), info.width, info.height, str(path), None))
            if len(records) == before:
                plog.add("empty_class", f"class folder {cdir.name!r} holds no usable image", cdir, None, "warning")
    if unmatched:
        plog.add("no_patient_id", f"{unmatched} image name(s) match no patient pattern: each is treated as its "
                 "own patient (pass a patient regex to group them)", root, None, "warning")
    return Manifest(root.name, root, tuple(classes), "multiclass", records, plog.problems)
