"""What the training-step benchmarks share: their options, the preset's overrides, and interleaved timing.

``mgacr_overhead.py`` and ``step_levers.py`` time the toolkit's own Stage II step on the same cached batches of a
preset's data; rows are timed in interleaved rounds (A B C A B C ...) and each row's median round is reported, so
a slow drift of the machine's load hits every row alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from deeppneumonia.data.batches import Batch

Step = Callable[[Batch, torch.Generator], dict[str, torch.Tensor]]
"""One training step's forward: (batch, generator) -> losses with a ``"loss"`` entry."""


def add_step_options(p: argparse.ArgumentParser) -> None:
    """The options every step benchmark takes (preset, data, size, batch, steps, rounds, warm-up, cache, --set)."""
    p.add_argument("--preset", default="siim-128-cpu")
    p.add_argument("--data", default="", help="data.path (default: the preset's)")
    p.add_argument("--size", type=int, default=0, help="data.size (default: the preset's)")
    p.add_argument("--batch", type=int, default=0, help="train.optim.batch_size (default: the preset's)")
    p.add_argument("--steps", type=int, default=6, help="timed steps per row and round")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; each row's median is reported")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per row first (a compiled row compiles here)")
    p.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "dp-bench-cache"))
    p.add_argument("--set", nargs="*", default=[], help="more config overrides for every row")


def base_overrides(args: argparse.Namespace, out: Path, fixed: Sequence[str] = ()) -> list[str]:
    """Config overrides of every row: a scratch run folder, no progress bars, the cache, the benchmark's ``fixed``
    settings, then the user's ``--set`` (which win over all of these), data, size and batch."""
    base = [f"run.out_dir={out}", "run.progress=false", f"data.cache_dir={args.cache_dir}", *fixed, *args.set]
    if args.data:
        base.append(f"data.path={args.data}")
    if args.size:
        base.append(f"data.size={args.size}")
    if args.batch:
        base.append(f"train.optim.batch_size={args.batch}")
    return base


def sgd(modules: Iterable[torch.nn.Module]) -> torch.optim.Optimizer:
    """An SGD optimizer (momentum 0.9) over the parameters of ``modules``."""
    return torch.optim.SGD([p for m in modules for p in m.parameters()], lr=1e-3, momentum=0.9)


def timed_steps(rt: Any, step: Step, opt: torch.optim.Optimizer, batches: list[Batch], n: int) -> float:
    """Seconds for ``n`` training steps (forward under the run's autocast, backward, SGD) on ``batches``, cycled."""
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for i in range(n):
        with rt.autocast():
            losses = step(batches[i % len(batches)], g)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
    if rt.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def interleaved_rates(rows: dict[str, Callable[[int], float]], args: argparse.Namespace, batch: int) -> dict[str, float]:
    """Images/s of each row: ``args.warmup`` untimed steps each, then ``args.rounds`` interleaved rounds of
    ``args.steps`` steps; the median round per row. ``rows`` maps a name to ``seconds(n_steps)``."""
    for run in rows.values():
        run(args.warmup)
    rounds: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(args.rounds):
        for name, run in rows.items():
            rounds[name].append(args.steps * batch / run(args.steps))
    return {name: statistics.median(r) for name, r in rounds.items()}


def load_average() -> float:
    """The 1-minute load average (nan where the platform has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
