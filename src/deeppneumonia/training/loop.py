"""The one training loop: runs any task (SimCLR, Deep Pneumonia, and the methods to come).

A task is a small object (see :class:`Task`) that owns its modules, yields its batches, returns a dict
of named losses for a batch ("loss" is what is optimised), validates, and saves its best artefact. The
loop does the rest: SGD with warm-up + schedule, mixed precision, progress bar, metrics.jsonl and
TensorBoard, best checkpoint by a chosen metric, and resuming from ``last.pt`` after a kill.
Each epoch's shuffling and augmentation are seeded by (seed, epoch), and ``last.pt`` is written after every
epoch and every ``checkpoint_minutes`` within one (with the step reached and the augmentation generator's
state), so a killed run resumes mid-epoch and computes exactly what an uninterrupted one would.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from deeppneumonia.config import OptimConfig
from deeppneumonia.data.batches import Batch
from deeppneumonia.errors import DeepPneumoniaError
from deeppneumonia.models.checkpoint import load_state, save_state
from deeppneumonia.runtime import distributed
from deeppneumonia.runtime.device import Runtime, compile_blocks

log = logging.getLogger(__name__)


class Task(Protocol):
    """What the loop needs of a training method (``training/tasks.py`` lists the methods)."""

    name: str  # the stage folder's role in logs ("pretrain", "train")
    best_metric: str  # a key of validate()'s result; higher is better
    images_per_batch: int  # images one optimizer step sees (for images/s)
    ddp_find_unused: bool  # some parameters get no gradient in some steps (DDP must look for them)

    def modules(self) -> dict[str, nn.Module]: ...
    def steps_per_epoch(self) -> int: ...
    def train_batches(self, epoch: int) -> Iterator[Batch]: ...
    def training_step(self, batch: Batch, g: torch.Generator) -> dict[str, Tensor]: ...
    def validate(self) -> dict[str, float]: ...
    def save_best(self, run_dir: Path, record: dict[str, Any]) -> None: ...
    # Optional: ``lr_factor(step: int, steps_per_epoch: int) -> float | None``, the learning-rate multiplier of
    # optimizer step ``step`` (0-based over the run); None there means the loop's schedule (``lr_factor`` below).
    # Tasks without it get exactly the loop's schedule. IAM uses it for its rounds (training/iam.py).


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up, then cosine to 0, step decay (x0.1 at 50 % and 75 %) or constant."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    if schedule == "step":
        return 0.1 ** (int(t >= 0.5) + int(t >= 0.75))
    return 1.0


@dataclass
class FitResult:
    best: float
    best_epoch: int
    epochs_run: int
    seconds: float
    history: list[dict[str, Any]]


class _Step(nn.Module):
    """The task's modules and its training step as one module, so that DDP sees the whole forward pass."""

    def __init__(self, task: Task, modules: dict[str, nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleDict(modules)
        self.task = task

    def forward(self, batch: Batch, g: torch.Generator) -> dict[str, Tensor]:
        return self.task.training_step(batch, g)


def _wrap(task: Task, modules: dict[str, nn.Module], rt: Runtime, sync_bn: bool) -> nn.Module:
    step: nn.Module = _Step(task, modules)
    if not distributed.is_distributed():
        return step
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn and rt.device.type == "cuda":
        step = nn.SyncBatchNorm.convert_sync_batchnorm(step)  # replaces the BN layers inside the task's modules
    ids = [rt.device.index] if rt.device.type == "cuda" else None
    return DistributedDataParallel(step, device_ids=ids,
                                   find_unused_parameters=task.ddp_find_unused)


def _generator(seed: int, epoch: int) -> torch.Generator:
    """Augmentation draws of one epoch; each rank its own (rank 0 = the single-process stream)."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch + 1_000_003 * distributed.rank())


def fit(task: Task, cfg: OptimConfig, run_dir: Path, rt: Runtime, seed: int = 0,
        progress: bool = True, checkpoint_minutes: float = 10.0, sync_bn: bool = True,
        compile: bool = False) -> FitResult:
    main = distributed.is_main()
    run_dir.mkdir(parents=True, exist_ok=True)
    modules = task.modules()
    for m in modules.values():
        m.to(rt.device).to(memory_format=rt.memory_format)
        if compile:
            compile_blocks(m)
    step_module = _wrap(task, modules, rt, sync_bn)
    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          nesterov=cfg.nesterov and cfg.momentum > 0)
    steps = task.steps_per_epoch()
    total, warmup = cfg.epochs * steps, int(cfg.warmup_epochs * steps)
    task_factor = getattr(task, "lr_factor", None)  # optional per-task schedule (see Task); None: the default

    def factor(s: int) -> float:
        f = task_factor(s, steps) if task_factor is not None else None
        return lr_factor(s, total, warmup, cfg.schedule) if f is None else f

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    scaler = torch.amp.GradScaler(enabled=rt.dtype == torch.float16)

    start, best, best_epoch, history = 0, -math.inf, -1, []
    partial: dict[str, Any] | None = None
    last = run_dir / "last.pt"
    if last.is_file():
        state = load_state(last)
        for name, m in modules.items():
            m.load_state_dict(state["modules"][name])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state.get("scaler", {}))
        start, best, best_epoch = int(state["epoch"]) + 1, float(state["best"]), int(state["best_epoch"])
        history = json.loads(state["history"])
        partial = state.get("partial")
        where = f"epoch {start}, step {partial['step']}" if partial else f"the end of epoch {start}"
        log.info("%s: resuming from %s at %s", task.name, last, where)

    def save(epoch_done: int, part: dict[str, Any] | None = None) -> None:
        if not main:
            return
        save_state(last, {"modules": {k: m.state_dict() for k, m in modules.items()},
                          "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                          "scaler": scaler.state_dict(), "epoch": epoch_done, "best": best,
                          "best_epoch": best_epoch, "history": json.dumps(history), "partial": part})

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run_dir / "tb")) if main else None
    t_start = time.perf_counter()
    try:
        for epoch in range(start, cfg.epochs):
            t0 = time.perf_counter()
            for m in modules.values():
                m.train()
            g = _generator(seed, epoch)
            sums: dict[str, float] = {}
            n, skip, elapsed_before = 0, 0, 0.0
            if partial is not None:  # resume inside this epoch: same batches, same random draws
                states = partial["generator"]
                states = states if isinstance(states, list) else [states]
                if len(states) == distributed.world_size():
                    g.set_state(states[distributed.rank()])
                else:  # another world size: same batches, fresh (seeded) augmentation draws
                    log.warning("resuming at %d process(es) from a run saved at %d: augmentation draws differ "
                                "for the rest of this epoch", distributed.world_size(), len(states))
                    g.manual_seed(seed * 100_003 + epoch + 7919 * int(partial["step"]) + 1_000_003 * distributed.rank())
                n = skip = int(partial["step"])
                sums = json.loads(partial["sums"])
                elapsed_before = float(partial["seconds"])
                partial = None
            last_save = time.perf_counter()
            batches = itertools.islice(task.train_batches(epoch), skip, None)
            bar = tqdm(batches, total=steps, initial=skip, desc=f"{task.name} {epoch + 1}/{cfg.epochs}",
                       disable=not progress or not main, leave=False)
            for batch in bar:
                with rt.autocast():
                    losses = step_module(batch, g)
                loss = losses["loss"]
                bad = not bool(torch.isfinite(loss))
                due = time.perf_counter() - last_save > checkpoint_minutes * 60 and n + 1 < steps
                if distributed.is_distributed():  # one decision for all ranks: rank clocks and losses differ
                    flags = distributed.mean_across_ranks({"bad": float(bad), "due": float(due)})
                    bad, due = flags["bad"] > 0, flags["due"] > 0
                if bad:
                    raise DeepPneumoniaError(f"{task.name}: non-finite loss ({loss.item()} here) at epoch {epoch + 1}, "
                                             f"step {n + 1}"
                                             f"; parts {({k: float(v) for k, v in losses.items()})}. Lower the "
                                             "learning rate or check the inputs.")
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
                n += 1
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach())
                bar.set_postfix(loss=f"{sums['loss'] / n:.4f}")
                if due:
                    states = distributed.gather_objects(g.get_state())
                    save(epoch - 1, {"step": n, "generator": states if len(states) > 1 else states[0],
                                     "sums": json.dumps(distributed.mean_across_ranks(sums)),
                                     "seconds": elapsed_before + time.perf_counter() - t0})
                    last_save = time.perf_counter()
            train_time = elapsed_before + time.perf_counter() - t0
            sums = distributed.mean_across_ranks(sums)
            if not main:  # rank 0 validates and writes; the others wait for the next epoch
                distributed.barrier()
                continue
            val = task.validate()
            rate = (n - skip) * _batch_images(task) / max(train_time - elapsed_before, 1e-9)
            record: dict[str, Any] = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"],
                                      "train_seconds": round(train_time, 2),
                                      "images_per_second": round(rate, 1)}
            record.update({f"train_{k}": v / max(n, 1) for k, v in sums.items()})
            record.update({f"val_{k}": v for k, v in val.items()})
            history.append(record)
            with (run_dir / "metrics.jsonl").open("a") as fh:
                fh.write(json.dumps(record) + "\n")
            for k, v in record.items():
                if isinstance(v, int | float) and k != "epoch" and writer is not None:
                    writer.add_scalar(k, v, epoch + 1)
            score = val.get(task.best_metric, -math.inf)
            improved = score > best or best_epoch < 0
            if improved:
                best, best_epoch = score, epoch + 1
                task.save_best(run_dir, record)
            log.info("%s epoch %d/%d: loss %.4f, val %s%s", task.name, epoch + 1, cfg.epochs,
                     record.get("train_loss", float("nan")),
                     ", ".join(f"{k} {v:.4f}" for k, v in val.items() if isinstance(v, float)),
                     " (best)" if improved else "")
            save(epoch)
            distributed.barrier()
    finally:
        if writer is not None:
            writer.close()
    if not main:  # the others learn the outcome from rank 0
        best, best_epoch, history = distributed.broadcast_object((best, best_epoch, history))  # type: ignore[misc]
    elif distributed.is_distributed():
        distributed.broadcast_object((best, best_epoch, history))
    return FitResult(best, best_epoch, len(history), time.perf_counter() - t_start, history)


def logged_seconds(stage_dir: Path) -> float | None:
    """Training time of a stage folder: the sum of its epochs' ``train_seconds`` in metrics.jsonl (None: no log).

    Unlike a wall clock around ``fit``, this survives resuming and re-scoring a finished run.
    """
    log_file = stage_dir / "metrics.jsonl"
    if not log_file.is_file():
        return None
    return sum(float(json.loads(line).get("train_seconds", 0.0)) for line in log_file.read_text().splitlines()
               if line.strip())


def _batch_images(task: Task) -> int:
    return int(task.images_per_batch)
