"""Dataset sources: each reads one on-disk layout into a :class:`~deeppneumonia.data.manifest.Manifest`."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Literal

from deeppneumonia.data.manifest import Manifest, ProblemLog
from deeppneumonia.data.sources.covid_cxr import is_covid_cxr, load_covid_cxr
from deeppneumonia.data.sources.folder import is_folder_layout, load_folder
from deeppneumonia.data.sources.generic_csv import load_generic_csv
from deeppneumonia.data.sources.nih import is_nih, load_nih
from deeppneumonia.data.sources.siim import is_siim, load_siim
from deeppneumonia.data.sources.single import load_single_image
from deeppneumonia.errors import DataError

SourceKind = Literal["auto", "siim", "folder", "covid_cxr", "nih", "nih_binary", "csv", "image"]
SOURCE_KINDS: tuple[str, ...] = ("auto", "siim", "folder", "covid_cxr", "nih", "nih_binary", "csv", "image")


def resolve_data_path(path: str) -> Path:
    """``sample:NAME`` names a data set shipped inside the package; anything else is a path."""
    if path.startswith("sample:"):
        res = resources.files("deeppneumonia") / "sample" / path.removeprefix("sample:")
        if not res.is_dir():
            raise DataError(f"no shipped sample {path!r}; shipped: sample:nih, sample:kermany")
        return Path(str(res))
    return Path(path).expanduser()


def detect_source(path: Path) -> str:
    """Which layout a path holds; raises DataError saying what was looked for when none matches."""
    if path.is_file() and path.suffix.lower() == ".csv":
        return "csv"
    if path.is_file():
        from deeppneumonia.data.imageio import detect_format
        from deeppneumonia.errors import ImageReadError

        try:
            detect_format(path)
        except ImageReadError as exc:
            raise DataError(f"{path}: a file that is neither a CSV (.csv) nor a readable image ({exc})") from exc
        return "image"
    if not path.exists():
        raise DataError(f"{path}: not found (expected a data folder, a CSV file or an image)")
    if not path.is_dir():
        raise DataError(f"{path}: not a folder, a CSV file or an image")
    for kind, test in (("siim", is_siim), ("nih", is_nih), ("covid_cxr", is_covid_cxr),
                       ("folder", is_folder_layout)):
        if test(path):
            return kind
    raise DataError(
        f"{path}: layout not recognised. Expected one of: SIIM (train_study_level.csv + "
        "train_image_level.csv), NIH (labels.csv with 'Finding Labels'), covid-chestxray (metadata.csv), "
        "class-per-folder (CLASS/*.jpg), or a generic CSV file (see docs/data.md)."
    )


def load_source(path: str | Path, kind: str = "auto", *, strict: bool = False,
                classes: Sequence[str] | None = None, patient_regex: str | None = None) -> Manifest:
    """Read a data set into a manifest. Problems are collected in ``manifest.problems`` (or raise if strict)."""
    path = Path(path).expanduser()
    if kind not in SOURCE_KINDS:
        raise DataError(f"unknown source kind {kind!r}; choose one of {SOURCE_KINDS}")
    if kind == "auto":
        kind = detect_source(path)
    if kind == "image":
        return load_single_image(path, ProblemLog(strict))
    if kind != "csv" and path.is_file():
        raise DataError(f"{path} is a file, but source {kind!r} reads a folder; for a CSV use source 'csv' or 'auto' "
                        "(data.source=auto)")
    plog = ProblemLog(strict)
    if kind == "siim":
        return load_siim(path, plog)
    if kind == "folder":
        return load_folder(path, plog, patient_regex)
    if kind == "covid_cxr":
        return load_covid_cxr(path, plog)
    if kind in ("nih", "nih_binary"):
        return load_nih(path, plog, "multilabel" if kind == "nih" else "binary")
    return load_generic_csv(path, plog, classes)
