"""One image file given where a data set is expected (``deeppneumonia data inspect scan.dcm``).

The manifest holds that image alone, without classes: it can be inspected and prepared, not trained on.
"""

from __future__ import annotations

from pathlib import Path

from deeppneumonia.data.manifest import Manifest, ProblemLog, Record
from deeppneumonia.data.sources._common import probe


def load_single_image(path: Path, plog: ProblemLog) -> Manifest:
    """A manifest holding the one image at ``path`` (no classes, empty target); empty when it cannot be read."""
    records = []
    info = probe(path, plog, path, None)
    if info is not None:
        records.append(Record(path.name, path, path.name, path.name, (), (), info.width, info.height, str(path), None))
    return Manifest(path.name, path.parent, (), "multiclass", records, plog.problems)
