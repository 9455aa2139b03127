"""What the studies share: one config per (preset, seed, row), the machine line, mean ± sd cells, split identity."""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path

import numpy as np
import torch

from deeppneumonia.config import Config, load_config
from deeppneumonia.training.pipeline import PreparedData


def study_config(preset: str, overrides: list[str], out: Path, seed: int, extra: tuple[str, ...]) -> Config:
    """The preset with the study's overrides, then the seed, the run folder and the row's own overrides."""
    return load_config(preset, [*overrides, f"run.seed={seed}", f"run.out_dir={out}", *extra])


def hardware() -> dict[str, str]:
    """What a study ran on: device (GPU name, or CPU with its threads), CPU, Python, torch, torchvision."""
    import torchvision

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    return {"device": dev, "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__}


def mean_sd(values: list[float | None]) -> str:
    """``mean ± sd`` of the values that are not None (one value: the mean alone; none: ``–``)."""
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return "–"
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if v.size > 1 else f"{v.mean():.3f}"  # one run: no spread to show


def split_fingerprint(data: PreparedData) -> str:
    """A short hash of the test part's image ids: two runs with the same one are scored on the same images."""

    ids = sorted(data.manifest.records[int(i)].image_id for i in data.test.indices)
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]
