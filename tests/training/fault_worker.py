"""A Stage II run that kills itself with SIGKILL at a chosen point (for tests/training/test_faults.py).

``python -m tests.training.fault_worker DATA_CSV RUN_DIR CACHE_DIR [KILL]`` where KILL is one of
``none``, ``step:N`` (during the N-th training step of this process), ``before-save:N`` / ``after-save:N``
(around the N-th ``last.pt`` write) or ``before-epoch-save:N`` (the N-th end-of-epoch state save: after the
epoch's metrics line was appended, before its state is saved).
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from deeppneumonia.config import load_config
from deeppneumonia.training import loop
from deeppneumonia.training.pipeline import run_train
from deeppneumonia.training.supervised import SupervisedTask


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    data, run_dir, cache_dir = sys.argv[1:4]
    kind, _, n = (sys.argv[4] if len(sys.argv) > 4 else "none").partition(":")
    counts = {"step": 0, "save": 0, "epoch-save": 0}
    step, save = SupervisedTask.training_step, loop.save_state

    def training_step(self: SupervisedTask, batch: Any, g: Any) -> Any:
        counts["step"] += 1
        if kind == "step" and counts["step"] == int(n):
            _die()
        return step(self, batch, g)

    def save_state(path: Any, state: dict[str, Any]) -> None:
        counts["save"] += 1
        counts["epoch-save"] += state["partial"] is None
        if (kind == "before-save" and counts["save"] == int(n)) or (
                kind == "before-epoch-save" and state["partial"] is None and counts["epoch-save"] == int(n)):
            _die()
        save(path, state)
        if kind == "after-save" and counts["save"] == int(n):
            _die()

    SupervisedTask.training_step = training_step  # type: ignore[method-assign]
    loop.save_state = save_state  # type: ignore[assignment]
    cfg = load_config(None, [
        f"data.path={data}", "data.size=32", f"data.cache_dir={cache_dir}", "data.val_fraction=0.25",
        "data.test_fraction=0.25", "train.pretrained=false", "train.optim.epochs=2", "train.optim.batch_size=4",
        "train.optim.warmup_epochs=0", "run.checkpoint_minutes=0", f"run.out_dir={run_dir}", "run.progress=false",
        "run.precision=fp32", "run.threads=1"])
    run_train(cfg)


if __name__ == "__main__":
    main()
