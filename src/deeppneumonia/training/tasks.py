"""The Stage II methods, by ``train.method``: one task object each, all run by the one loop (``training/loop.py``).

Every task is built as ``TASKS[name](cfg, train, val, rt, classes, task, encoder)``; Stage I (SimCLR) is
:class:`~deeppneumonia.training.simclr.SimCLRTask`, built by the pipeline directly.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from deeppneumonia.config import Config
from deeppneumonia.data.batches import CachedSplit
from deeppneumonia.runtime.device import Runtime
from deeppneumonia.training.can import CANTask
from deeppneumonia.training.iam import IAMTask
from deeppneumonia.training.loop import Task
from deeppneumonia.training.supervised import SupervisedTask


class TaskFactory(Protocol):
    def __call__(self, cfg: Config, train: CachedSplit, val: CachedSplit, rt: Runtime, classes: tuple[str, ...],
                 task: str, encoder: dict[str, Tensor] | None = None) -> Task: ...


TASKS: dict[str, TaskFactory] = {
    "deep_pneumonia": SupervisedTask,  # MGACR + class-balanced focal loss (the paper)
    "iam": IAMTask,  # Iterative Attention Mining (weakly supervised localization)
    "can": CANTask,  # Cross-Attention Network (multi-label)
}
