"""What the command modules share: config loading, the data-source and config arguments, JSON printing."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from deeppneumonia.config import Config

DEFAULT_CACHE = Path.home() / ".cache" / "deeppneumonia"


def add_source_args(p: argparse.ArgumentParser) -> None:
    """The data-source arguments shared by the data commands: PATH, --source, --strict, --patient-regex."""
    from deeppneumonia.data.sources import SOURCE_KINDS

    p.add_argument("path", type=Path, help="data folder or generic CSV file")
    p.add_argument("--source", default="auto", choices=SOURCE_KINDS, help="layout (default: detect)")
    p.add_argument("--strict", action="store_true", help="stop at the first bad file or row instead of skipping")
    p.add_argument("--patient-regex", default=None, help="class-per-folder: regex whose first group is the patient")


def add_config_args(p: argparse.ArgumentParser, default: str = "quick") -> None:
    """``--config/-c PRESET`` and the positional dotted overrides."""
    p.add_argument("--config", "-c", default=default, help=f"preset name or YAML path (default: {default})")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.optim.epochs=5 data.size=224")


def load_cli_config(args: argparse.Namespace) -> Config:
    """The preset of ``--config`` with the positional overrides (and ``run.progress=false`` under ``--quiet``)."""
    from deeppneumonia.config import load_config

    overrides = list(args.overrides)
    if args.quiet:
        overrides.append("run.progress=false")
    return load_config(args.config, overrides)


DICOM_SUFFIXES = (".dcm", ".dicom")


def require_dicom_if_needed(paths: list[Path]) -> None:
    """Fail early with the dicom extra's hint when a DICOM file is asked for and pydicom is missing.

    Raises:
        MissingExtraError: a path (or a file in a folder) ends in .dcm/.dicom and pydicom is not installed.
    """
    from deeppneumonia.extras import has, require

    if has("pydicom"):
        return
    for p in paths:
        files = p.rglob("*") if p.is_dir() else [p]
        if any(f.suffix.lower() in DICOM_SUFFIXES for f in files):
            require("pydicom")


def print_json(title: str, data: object) -> None:
    """Print ``title`` and ``data`` as indented JSON (rank 0 only under torchrun)."""
    from deeppneumonia.runtime import distributed

    if not distributed.is_main():
        return
    print(f"{title}\n{json.dumps(data, indent=1, default=str)}")


def command_line() -> str:
    """How this process was invoked, as a reader would retype it (recorded in the study tables)."""
    import shlex
    import sys

    return "deeppneumonia " + shlex.join(sys.argv[1:])
