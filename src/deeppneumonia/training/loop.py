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

import contextlib
import itertools
import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from deeppneumonia.config import OptimConfig
from deeppneumonia.data.batches import Batch, resize_batch
from deeppneumonia.errors import CheckpointError, DeepPneumoniaError
from deeppneumonia.models.checkpoint import load_state, remove_stale_temps, save_state
from deeppneumonia.runtime import distributed
from deeppneumonia.runtime.device import Runtime, compile_blocks

log = logging.getLogger(__name__)


class Task(Protocol):
    """What the loop needs of a training method (``training/tasks.py`` lists the methods)."""

    name: str  # the stage folder's role in logs ("pretrain", "train")
    best_metric: str  # a key of validate()'s result, higher is better; "last" keeps the last epoch
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


def onecycle_factor(step: int, total: int, warmup_fraction: float = 0.3, start: float = 0.04) -> float:
    """``torch.optim.lr_scheduler.OneCycleLR`` (two cosine phases, no momentum cycling) as a factor of the peak LR.

    Rises from ``start`` to 1 over the first ``warmup_fraction`` of the ``total`` steps, then falls to
    ``start / 1e4`` at the last step (OneCycleLR's ``div_factor = 1 / start`` and ``final_div_factor = 1e4``).
    """
    up = warmup_fraction * total - 1
    if step <= up:
        t, a, b = (step / up if up > 0 else 1.0), start, 1.0
    else:
        t, a, b = min(1.0, (step - up) / max(total - 1 - up, 1e-9)), 1.0, start / 1e4
    return b + (a - b) / 2 * (math.cos(math.pi * t) + 1)


def epoch_size(epoch: int, epochs: int, full: int, start: int, until: float) -> int:
    """Progressive resizing: the image side trained on in ``epoch`` (0-based) of ``epochs``.

    Rises linearly from ``start`` px at epoch 0 to ``full`` at ``until`` x ``epochs``, rounded down to a multiple
    of 32 px (never below ``start``); ``full`` from then on, and always when ``start`` is 0 (off) or >= ``full``.
    The last epoch is always at ``full`` (``until=1`` included), so the model is validated and tested at a size it
    has trained on.
    """
    if start <= 0 or start >= full:
        return full
    reach = until * epochs
    if epoch >= reach or epoch >= epochs - 1:
        return full
    side = start + (full - start) * epoch / reach
    return min(full, max(start, int(side) // 32 * 32))


def _progressive(batches: Iterator[Batch], epoch: int, cfg: OptimConfig, side: list[int]) -> Iterator[Batch]:
    """The epoch's batches at :func:`epoch_size` (``cfg.resize_from`` on); the side used is put in ``side``."""
    for b in batches:
        size = epoch_size(epoch, cfg.epochs, b.images.shape[-1], cfg.resize_from, cfg.resize_until)
        side[:] = [size]
        yield resize_batch(b, size)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Linear warm-up, then cosine to 0, step decay (x0.1 at 50 % and 75 %) or constant (onecycle: see above)."""
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
        """The task's losses for one batch (run through DDP when distributed)."""
        return self.task.training_step(batch, g)


def _wrap(task: Task, modules: dict[str, nn.Module], rt: Runtime, sync_bn: bool, compile: bool = False) -> nn.Module:
    """The training step as one module: SyncBatchNorm first (under torchrun on GPUs), then compile, then DDP.

    That order matters: compiling first would trace the plain BatchNorm layers that the conversion then
    replaces (graph breaks or crashes with DDP). SyncBatchNorm itself reads its gathered counts back to the
    host in every layer (PyTorch drops empty ranks with a boolean mask), so ``run.sync_bn=false`` is faster.
    """
    step: nn.Module = _Step(task, modules)
    if distributed.is_distributed() and sync_bn and rt.device.type == "cuda":
        step = nn.SyncBatchNorm.convert_sync_batchnorm(step)  # replaces the BN layers inside the task's modules
    if compile:
        for m in modules.values():
            compile_blocks(m)
    if not distributed.is_distributed():
        return step
    from torch.nn.parallel import DistributedDataParallel

    ids = [rt.device.index] if rt.device.type == "cuda" else None
    return DistributedDataParallel(step, device_ids=ids,
                                   find_unused_parameters=task.ddp_find_unused)


class WeightEMA:
    """Exponential moving average of every parameter and buffer of the task's modules (``train.ema_decay``).

    After optimizer step t (from 0): ``ema = d * ema + (1 - d) * live`` with ``d = min(decay, (1 + t) / (10 + t))``
    for floating tensors (integer buffers such as BatchNorm's step counter are copied). :meth:`applied` swaps the
    averages into the modules (validation and the saved model then use them) and puts the live weights back.
    """

    def __init__(self, modules: dict[str, nn.Module], decay: float) -> None:
        self.decay, self.updates = decay, 0
        self.names = [(name, k) for name, m in modules.items() for k in m.state_dict()]
        self.live = [t for m in modules.values() for t in m.state_dict().values()]  # aliases of the weights
        self.ema = [t.detach().clone() for t in self.live]
        self.floating = [i for i, t in enumerate(self.live) if t.is_floating_point()]
        self.other = [i for i, t in enumerate(self.live) if not t.is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        """Fold the live weights into the averages after an optimizer step (integer buffers copied)."""
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        torch._foreach_lerp_([self.ema[i] for i in self.floating], [self.live[i] for i in self.floating], 1.0 - d)
        for i in self.other:
            self.ema[i].copy_(self.live[i])

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Context: the modules hold the averaged weights inside, their live weights again after."""
        with torch.no_grad():
            backup = [t.clone() for t in self.live]
            torch._foreach_copy_(self.live, self.ema)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.live, backup)

    def state_dict(self) -> dict[str, Any]:
        """The number of updates and the averaged tensors by ``module/key`` (saved in ``last.pt``)."""
        return {"updates": self.updates, "tensors": {f"{n}/{k}": t for (n, k), t in zip(self.names, self.ema, strict=True)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the averages and update count saved by :meth:`state_dict`."""
        self.updates = int(state["updates"])
        with torch.no_grad():
            for (n, k), t in zip(self.names, self.ema, strict=True):
                t.copy_(state["tensors"][f"{n}/{k}"])


# steps between host reads of the loss sums and the non-finite flag on a GPU or under torchrun (every step on
# one CPU process, where reading them costs nothing)
SYNC_EVERY = 25


def _any_across_ranks(flags: Tensor) -> Tensor:
    """Element-wise max of a flags tensor over the ranks (every rank gets it); the tensor as is without torchrun."""
    if distributed.is_distributed():
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    return flags


def _check_finite(name: str, bad: Tensor, due: bool, losses: dict[str, Tensor], epoch: int, checked: int,
                  n: int) -> bool:
    """One host read for the steps since the last check: raise if a loss was non-finite on any rank; else
    return whether a mid-epoch save is due on any rank (one decision for all: rank clocks differ)."""
    flags = _any_across_ranks(torch.stack([bad.float(), torch.full((), float(due), device=bad.device)]))
    is_bad, is_due = (bool(v) for v in (flags > 0).tolist())
    if is_bad:
        raise DeepPneumoniaError(f"{name}: non-finite loss at epoch {epoch + 1}, between steps {checked + 1} and {n}"
                                 f"; parts of step {n} {({k: float(v.detach()) for k, v in losses.items()})}. Lower the "
                                 "learning rate or check the inputs.")
    return is_due


def _generator(seed: int, epoch: int) -> torch.Generator:
    """Augmentation draws of one epoch; each rank its own (rank 0 = the single-process stream)."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch + 1_000_003 * distributed.rank())


def fit(task: Task, cfg: OptimConfig, run_dir: Path, rt: Runtime, seed: int = 0,
        progress: bool = True, checkpoint_minutes: float = 10.0, sync_bn: bool = True,
        compile: bool = False, ema_decay: float = 0.0) -> FitResult:
    """Train ``task`` for ``cfg.epochs`` epochs in ``run_dir``, resuming from its ``last.pt`` when there is one.

    After every epoch rank 0 validates (with the EMA weights when ``ema_decay > 0``), appends to
    ``metrics.jsonl`` and TensorBoard, calls ``task.save_best`` when ``task.best_metric`` improves and writes
    ``last.pt``; within an epoch ``last.pt`` is also written every ``checkpoint_minutes``. Under torchrun every
    rank gets the same result.

    Raises:
        CheckpointError: ``last.pt`` does not fit this run's modules.
    """
    main = distributed.is_main()
    run_dir.mkdir(parents=True, exist_ok=True)
    modules = task.modules()
    for m in modules.values():
        m.to(rt.device).to(memory_format=rt.memory_format)
    step_module = _wrap(task, modules, rt, sync_bn, compile)
    ema = WeightEMA(modules, ema_decay) if ema_decay > 0 else None
    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                          nesterov=cfg.nesterov and cfg.momentum > 0)
    steps = task.steps_per_epoch()
    total, warmup = cfg.epochs * steps, int(cfg.warmup_epochs * steps)
    task_factor = getattr(task, "lr_factor", None)  # optional per-task schedule (see Task); None: the default

    def factor(s: int) -> float:
        """Learning-rate multiplier of step ``s``: the task's own schedule if it gives one, else the loop's."""
        f = task_factor(s, steps) if task_factor is not None else None
        if f is not None:
            return float(f)
        if cfg.schedule == "onecycle":
            return onecycle_factor(s, total, cfg.onecycle_warmup, cfg.onecycle_start)
        return lr_factor(s, total, warmup, cfg.schedule)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    scaler = torch.amp.GradScaler(enabled=rt.dtype == torch.float16)

    start, best, best_epoch, history = 0, -math.inf, -1, []
    partial: dict[str, Any] | None = None
    last = run_dir / "last.pt"
    if main:
        remove_stale_temps(run_dir)  # half-written files of a killed run
    if last.is_file():
        state = load_state(last, modules)
        for name, m in modules.items():
            try:
                m.load_state_dict(state["modules"][name])
            except RuntimeError as exc:
                raise CheckpointError(f"{last}: does not fit this run's {name} ({str(exc)[:300]}); delete it to "
                                      "start afresh") from exc
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        if scaler.is_enabled() and state.get("scaler"):  # a CPU / bf16 / fp32 run saved a disabled scaler: {}
            scaler.load_state_dict(state["scaler"])
        if ema is not None:
            if state.get("ema"):
                ema.load_state_dict(state["ema"])
            else:
                log.warning("%s: %s holds no EMA of the weights; the average starts from the resumed weights",
                            task.name, last)
        start, best, best_epoch = int(state["epoch"]) + 1, float(state["best"]), int(state["best_epoch"])
        history = json.loads(state["history"])
        partial = state.get("partial")
        where = f"epoch {start}, step {partial['step']}" if partial else f"the end of epoch {start}"
        log.info("%s: resuming from %s at %s", task.name, last, where)
    if main:  # the log holds exactly the epochs of the state: a kill after an append and before the save left one more
        _write_metrics(run_dir / "metrics.jsonl", history)

    def save(epoch_done: int, part: dict[str, Any] | None = None) -> None:
        """Write ``last.pt`` (rank 0 only): modules, optimizer, scheduler, scaler, EMA, history, ``part`` of an epoch."""
        if not main:
            return
        save_state(last, {"modules": {k: m.state_dict() for k, m in modules.items()},
                          "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                          "scaler": scaler.state_dict(), "epoch": epoch_done, "best": best,
                          "best_epoch": best_epoch, "history": json.dumps(history), "partial": part,
                          "ema": ema.state_dict() if ema is not None else None})

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
            # loss sums and the non-finite flag stay on the device; the host reads them every `every` steps
            acc = {k: torch.tensor(v, dtype=torch.float64, device=rt.device) for k, v in sums.items()}
            bad_t = torch.zeros((), dtype=torch.bool, device=rt.device)
            every = 1 if rt.device.type == "cpu" and not distributed.is_distributed() else SYNC_EVERY
            checked = n
            last_save = time.perf_counter()
            batches: Iterator[Batch] = itertools.islice(task.train_batches(epoch), skip, None)
            side: list[int] = []  # the side trained on this epoch (progressive resizing), for the log
            if cfg.resize_from:
                batches = _progressive(batches, epoch, cfg, side)
            bar = tqdm(batches, total=steps, initial=skip, desc=f"{task.name} {epoch + 1}/{cfg.epochs}",
                       disable=not progress or not main, leave=False)
            for batch in bar:
                with rt.autocast():
                    losses = step_module(batch, g)
                loss = losses["loss"]
                bad_t |= ~torch.isfinite(loss.detach())
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                sched.step()
                if ema is not None:
                    ema.update()
                n += 1
                for k, v in losses.items():
                    v = v.detach().to(torch.float64)
                    acc[k] = acc[k] + v if k in acc else v
                if n % every and n < steps:
                    continue
                due = time.perf_counter() - last_save > checkpoint_minutes * 60 and n < steps
                due = _check_finite(task.name, bad_t, due, losses, epoch, checked, n)
                checked = n
                if progress and main:
                    bar.set_postfix(loss=f"{float(acc['loss']) / n:.4f}")
                if due:
                    sums = {k: float(v) for k, v in acc.items()}
                    states = distributed.gather_objects(g.get_state())
                    save(epoch - 1, {"step": n, "generator": states if len(states) > 1 else states[0],
                                     "sums": json.dumps(distributed.mean_across_ranks(sums)),
                                     "seconds": elapsed_before + time.perf_counter() - t0})
                    last_save = time.perf_counter()
            if checked < n:
                _check_finite(task.name, bad_t, False, {}, epoch, checked, n)
            sums = {k: float(v) for k, v in acc.items()}
            train_time = elapsed_before + time.perf_counter() - t0
            sums = distributed.mean_across_ranks(sums)
            if not main:  # rank 0 validates and writes; the others wait for the next epoch
                distributed.barrier()
                continue
            with ema.applied() if ema is not None else contextlib.nullcontext():
                val = task.validate()
            rate = (n - skip) * _batch_images(task) / max(train_time - elapsed_before, 1e-9)
            record: dict[str, Any] = {"epoch": epoch + 1, "lr": opt.param_groups[0]["lr"],
                                      "train_seconds": round(train_time, 2),
                                      "images_per_second": round(rate, 1)}
            if side:
                record["train_size"] = side[0]
            record.update({f"train_{k}": v / max(n, 1) for k, v in sums.items()})
            record.update({f"val_{k}": v for k, v in val.items()})
            history.append(record)
            with (run_dir / "metrics.jsonl").open("a") as fh:
                fh.write(json.dumps(record) + "\n")
            for k, v in record.items():
                if isinstance(v, int | float) and k != "epoch" and writer is not None:
                    writer.add_scalar(k, v, epoch + 1)
            score = float(epoch + 1) if task.best_metric == "last" else val.get(task.best_metric, -math.inf)
            improved = score > best or best_epoch < 0
            if improved:
                best, best_epoch = score, epoch + 1
                with ema.applied() if ema is not None else contextlib.nullcontext():
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


def _write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite metrics.jsonl with the epochs of ``history`` (atomically; none: remove it)."""
    if not history:
        path.unlink(missing_ok=True)
        return
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in history))
    os.replace(tmp, path)


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
    """Images one optimizer step sees (for images/s)."""
    return int(task.images_per_batch)
