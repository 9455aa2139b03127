"""covid-chestxray-dataset layout (Cohen et al., arXiv:2006.11988): ``metadata.csv`` + ``images/``.

Rows are kept when ``modality`` is X-ray and ``view`` is frontal (PA, AP, AP Supine, AP semi erect,
AP erect). The label is the ``finding`` column; findings in ``UNUSABLE_FINDINGS`` (e.g. ``todo``) are
reported and left out. Findings may be hierarchical (``Pneumonia/Viral/COVID-19``): by default the
leaf is the class. The study is the patient plus the ``offset`` (days since admission).
"""

from __future__ import annotations

from pathlib import Path

from deeppneumonia.data.manifest import Manifest, ProblemLog, Record, one_hot
from deeppneumonia.data.sources._common import drop_duplicates, probe, read_csv, read_header, safe_child

FRONTAL_VIEWS = {"pa", "ap", "ap supine", "ap semi erect", "ap erect"}
UNUSABLE_FINDINGS = {"", "todo", "unknown", "nan"}


def is_covid_cxr(root: Path) -> bool:
    """Whether ``root`` holds a ``metadata.csv`` with ``finding`` and ``filename`` columns."""
    meta = root / "metadata.csv"
    if not meta.is_file():
        return False
    header = read_header(meta)
    return "finding" in header and "filename" in header


def load_covid_cxr(root: Path, plog: ProblemLog) -> Manifest:
    """Read the covid-chestxray-dataset at ``root`` (frontal X-rays only) into a multi-class manifest.

    Classes are the sorted leaf findings; filtered and unusable rows are reported to ``plog``.
    """
    meta = root / "metadata.csv"
    rows = []
    for row_no, row in read_csv(meta, ["patientid", "finding", "view", "modality", "filename"], plog):
        if row["modality"].lower() != "x-ray":
            plog.add("filtered", f"modality {row['modality']!r} is not X-ray", meta, row_no, "warning")
            continue
        if row["view"].lower() not in FRONTAL_VIEWS:
            plog.add("filtered", f"view {row['view']!r} is not frontal", meta, row_no, "warning")
            continue
        finding = row["finding"].split("/")[-1].strip()
        if finding.lower() in UNUSABLE_FINDINGS:
            plog.add("unusable_label", f"finding {row['finding']!r} is not a usable label", meta, row_no)
            continue
        folder = safe_child(root, row.get("folder") or "images", plog, meta, row_no)  # the same check as filename
        path = None if folder is None else safe_child(folder, row["filename"], plog, meta, row_no)
        if path is None:
            continue
        info = probe(path, plog, meta, row_no)
        if info is None:
            continue
        rows.append((row_no, row, finding, path, info))
    classes = tuple(sorted({r[2] for r in rows}))
    records = []
    for row_no, row, finding, path, info in rows:
        image_id = row["filename"]
        patient = row["patientid"]
        records.append(Record(image_id, path, patient, f"{patient}:{row.get('offset', '')}",
                              one_hot(classes.index(finding), len(classes)), (), info.width, info.height,
                              str(meta), row_no))
    records = drop_duplicates(records, plog)
    return Manifest(root.name, root, classes, "multiclass", records, plog.problems)
