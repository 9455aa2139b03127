"""Helpers shared by the dataset sources: CSV reading with row numbers, image probing with reporting."""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from deeppneumonia.data.imageio import ImageInfo, probe_image
from deeppneumonia.data.manifest import ProblemLog, Record
from deeppneumonia.errors import DataError, ImageReadError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".dcm", ".dicom"}


_BOM = "\ufeff"


class _LineFeed:
    """The physical lines of a CSV text, handed to :mod:`csv` one at a time, remembering what each row used."""

    def __init__(self, text: str, offset: int) -> None:
        self._lines = iter(io.StringIO(text, newline=""))
        self.offset = offset  # byte offset (in the file) of the next row
        self.used: list[str] = []

    def __iter__(self) -> _LineFeed:
        return self

    def __next__(self) -> str:
        """The next physical line, remembered for ``take``."""
        line = next(self._lines)
        self.used.append(line)
        return line

    def take(self) -> tuple[int, str]:
        """(byte offset, raw text) of the row the csv reader has just read."""
        raw = "".join(self.used)
        start = self.offset
        self.offset += len(raw.encode("utf-8", "surrogateescape"))
        self.used = []
        return start, raw


def _row_defect(raw: str, start: int) -> str | None:
    """What makes a raw CSV row unusable as text (a byte that is not UTF-8, a NUL byte), or None."""
    for i, ch in enumerate(raw):
        if "\udc80" <= ch <= "\udcff" or ch == "\x00":
            at = start + len(raw[:i].encode("utf-8", "surrogateescape"))
            if ch == "\x00":
                return f"a NUL byte at byte offset {at} (is this a binary or corrupted file?)"
            return (f"byte 0x{ord(ch) - 0xDC00:02x} at byte offset {at} is not UTF-8 text; save the file as UTF-8 "
                    "(e.g. `iconv -f latin1 -t utf-8`)")
    return None


def open_csv(path: Path, plog: ProblemLog | None = None) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """The one CSV reader of every source: (header, rows as (row number, {column: stripped value})).

    Row numbers count the header as row 1, as a spreadsheet does. The header must be readable UTF-8 text
    with unique column names (a DataError naming the file says otherwise). A malformed row (bytes that are
    not UTF-8, a NUL byte, a field above the csv module's size limit, a quote the csv module cannot parse)
    is reported to ``plog`` with its file and row and skipped (``plog`` None: a DataError); the rows after it
    are still read. Short rows get empty values; cells beyond the header are ignored.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read file: {exc}") from exc
    text = data.decode("utf-8", "surrogateescape")
    offset = 0
    if text.startswith(_BOM):
        text, offset = text[1:], 3
    feed = _LineFeed(text, offset)
    reader = csv.reader(feed)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: empty CSV file (no header row)") from None
    except csv.Error as exc:
        raise DataError(f"{path}:1: cannot parse the header row: {exc}") from exc
    start, raw = feed.take()
    defect = _row_defect(raw, start)
    if defect:
        raise DataError(f"{path}:1: the header row has {defect}")
    header = [h.strip() for h in header]
    if not any(header):
        raise DataError(f"{path}:1: the header row is empty")
    seen: dict[str, int] = {}
    for i, h in enumerate(header):
        if h and h in seen:
            raise DataError(f"{path}:1: column {h!r} appears more than once in the header (columns {seen[h] + 1} and "
                            f"{i + 1}); rename or remove one of them")
        seen.setdefault(h, i)

    def report(row_no: int, message: str) -> None:
        """Report a malformed row to ``plog`` (skipped), or raise DataError when there is no ``plog``."""
        if plog is None:
            raise DataError(f"{path}:{row_no}: {message}")
        plog.add("bad_row", f"{message}; row skipped", path, row_no)

    def rows() -> Iterator[tuple[int, dict[str, str]]]:
        """Yield (row number, row) for each usable row; blank lines are skipped, malformed rows reported."""
        row_no = 1
        while True:
            row_no += 1
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                feed.take()
                report(row_no, f"cannot parse the row: {exc}")
                continue
            start, raw = feed.take()
            defect = _row_defect(raw, start)
            if defect:
                report(row_no, f"the row has {defect}")
                continue
            if not fields or not any(f.strip() for f in fields):
                continue  # a blank line
            values = {h: (fields[i].strip() if i < len(fields) else "") for i, h in enumerate(header) if h}
            yield row_no, values

    return header, rows()


def read_csv(path: Path, required: Sequence[str], plog: ProblemLog | None = None) -> Iterator[tuple[int, dict[str, str]]]:
    """Yield (row number, row) from a CSV read by :func:`open_csv`; row numbers count the header as row 1.

    Raises DataError naming the file and the missing columns when the header lacks a required one.
    """
    header, rows = open_csv(path, plog)
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; the header has {header}")
    return rows


def read_header(path: Path) -> list[str]:
    """The column names of a CSV (for layout detection): [] when the file cannot be read as a CSV."""
    try:
        return open_csv(path)[0]
    except DataError:
        return []


def number(text: str, what: str, *, positive: bool = False) -> float:
    """A finite number from a CSV cell (``positive``: also > 0); ValueError saying what is wrong."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{what} {text!r} is not a finite number")
    if positive and value <= 0:
        raise ValueError(f"{what} {text!r} must be greater than 0")
    return value


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
