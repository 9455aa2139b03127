"""What ``deeppneumonia data inspect`` reports: counts, sizes, formats and every problem found."""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm

from deeppneumonia.data.imageio import read_image
from deeppneumonia.data.manifest import Manifest, Problem
from deeppneumonia.errors import ImageReadError


@dataclass
class DataSummary:
    name: str
    task: str
    classes: tuple[str, ...]
    images: int
    patients: int
    studies: int
    image_counts: dict[str, int]
    study_counts: dict[str, int]
    images_with_boxes: int
    boxes: int
    sizes: dict[str, int] = field(default_factory=dict)
    formats: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict (problems as dicts)."""
        d = dict(self.__dict__)
        d["problems"] = [p.__dict__ for p in self.problems]
        return d


def _decode_info(path: str) -> tuple[str | None, str | None]:
    """Worker job: (``FORMAT N-bit Cch``, None) for an image that decodes, else (None, error message)."""
    try:
        info = read_image(path).info
        return f"{info.format} {info.bit_depth}-bit {info.channels}ch", None
    except ImageReadError as exc:
        return None, str(exc)


def summarize(manifest: Manifest, decode: bool = True, workers: int | None = None,
              progress: bool = True) -> DataSummary:
    """Summarise a manifest. With ``decode`` every image is fully decoded, so truncated files are found."""
    recs = manifest.records
    problems = list(manifest.problems)
    formats: Counter[str] = Counter()
    bad: set[int] = set()
    if decode and recs:
        paths = [str(r.path) for r in recs]
        workers = workers or min(os.cpu_count() or 1, 8)
        bar = tqdm(total=len(paths), desc="decoding", unit="img", disable=not progress)
        with contextlib.ExitStack() as stack:
            if workers <= 1 or len(paths) < 64:  # a few images: no worker processes to start
                results: Iterator[tuple[str | None, str | None]] = map(_decode_info, paths)
            else:
                results = stack.enter_context(ProcessPoolExecutor(max_workers=workers)).map(_decode_info, paths,
                                                                                             chunksize=32)
            for i, (fmt, err) in enumerate(results):
                bar.update(1)
                if fmt is None:
                    bad.add(i)
                    problems.append(Problem("unreadable_image", err or "decode failed", recs[i].source_file,
                                            recs[i].source_row))
                else:
                    formats[fmt] += 1
        bar.close()
    good = manifest.subset(i for i in range(len(recs)) if i not in bad)
    sizes = Counter(f"{r.width}x{r.height}" for r in good.records)
    top_sizes = dict(sizes.most_common(8))
    if len(sizes) > 8:
        top_sizes[f"... {len(sizes) - 8} other sizes"] = sum(sizes.values()) - sum(top_sizes.values())
    return DataSummary(
        name=manifest.name, task=manifest.task, classes=manifest.classes, images=len(good),
        patients=len(set(good.patients())), studies=len({r.study_id for r in good.records}),
        image_counts=good.class_counts(), study_counts=good.study_class_counts(),
        images_with_boxes=sum(1 for r in good.records if r.boxes), boxes=sum(len(r.boxes) for r in good.records),
        sizes=top_sizes, formats=dict(formats.most_common()), problems=problems,
    )


def format_summary(s: DataSummary, max_problems: int = 50) -> str:
    """The summary as text: counts per class, sizes, formats and the first ``max_problems`` problems."""
    lines = [f"data set: {s.name} ({s.task}, {len(s.classes)} classes)",
             f"images: {s.images}   patients: {s.patients}   studies: {s.studies}",
             f"images with boxes: {s.images_with_boxes} ({s.boxes} boxes)", "",
             f"{'class':<28}{'images':>8}{'studies':>9}"]
    for c in s.classes:
        lines.append(f"{c:<28}{s.image_counts[c]:>8}{s.study_counts[c]:>9}")
    lines += ["", "sizes (WxH): " + ", ".join(f"{k}: {v}" for k, v in s.sizes.items())]
    if s.formats:
        lines.append("formats: " + ", ".join(f"{k}: {v}" for k, v in s.formats.items()))
    errors = [p for p in s.problems if p.severity == "error"]
    warnings = [p for p in s.problems if p.severity == "warning"]
    lines += ["", f"problems: {len(errors)} skipped, {len(warnings)} warnings"]
    for p in s.problems[:max_problems]:
        lines.append(f"  {p}")
    if len(s.problems) > max_problems:
        lines.append(f"  ... {len(s.problems) - max_problems} more (use --json for all)")
    return "\n".join(lines)
