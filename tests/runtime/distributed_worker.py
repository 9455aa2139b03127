"""Run by tests/runtime/test_distributed.py under ``torchrun --nproc_per_node 2`` (gloo, CPU).

Usage: ``torchrun ... tests/runtime/distributed_worker.py DATA_CSV OUT_DIR``. Each rank writes what it computed to
``OUT_DIR/rank{r}.pt`` (plain tensors and floats, read back with ``weights_only=True``):

* one DDP step of each stage on its slice of a fixed global batch (loss and weights after one SGD step),
  which the test compares against one process computing the same global batch;
* the weights after a short ``fit`` of each stage, which must be equal on both ranks.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from deeppneumonia.config import Config, load_config
from deeppneumonia.data.batches import Batch, CachedSplit
from deeppneumonia.runtime import distributed
from deeppneumonia.runtime.device import resolve_runtime, seed_everything
from deeppneumonia.training.loop import _wrap, fit
from deeppneumonia.training.simclr import SimCLRTask
from deeppneumonia.training.supervised import SupervisedTask

GLOBAL_BATCH = 8


def config(data: Path, out: Path) -> Config:
    return load_config(None, [
        f"data.path={data}", "data.size=32", f"data.cache_dir={out / 'cache'}", "data.val_fraction=0.25",
        "data.test_fraction=0.25", "pretrain.optim.epochs=1", f"pretrain.optim.batch_size={GLOBAL_BATCH}",
        "pretrain.knn_k=3", "train.optim.epochs=1", f"train.optim.batch_size={GLOBAL_BATCH}",
        "train.optim.warmup_epochs=0", "train.pretrained=false", f"run.out_dir={out / 'run'}", "run.progress=false",
        "run.precision=fp32", "run.device=cpu", "run.channels_last=false"])


def make_task(stage: str, cfg: Config, train: CachedSplit, val: CachedSplit, classes: tuple[str, ...]):  # type: ignore[no-untyped-def]
    seed_everything(0)  # the same initial weights in every process (DDP also broadcasts rank 0's)
    rt = resolve_runtime("cpu", "fp32", False)
    if stage == "pretrain":
        return SimCLRTask(cfg, train, val, rt, multiclass=True), rt
    return SupervisedTask(cfg, train, val, rt, classes, "multiclass"), rt


def global_batch_slices(train: CachedSplit, world: int) -> list[Batch]:
    pos = np.arange(GLOBAL_BATCH)
    per = GLOBAL_BATCH // world
    return [train.batch(pos[r * per:(r + 1) * per]) for r in range(world)]


def step_generator(r: int) -> torch.Generator:
    return torch.Generator().manual_seed(1000 + r)


def one_step(stage: str, cfg: Config, train: CachedSplit, val: CachedSplit, classes: tuple[str, ...]) -> dict:
    task, rt = make_task(stage, cfg, train, val, classes)
    modules = task.modules()
    step = _wrap(task, modules, rt, sync_bn=False)
    r = distributed.rank()
    batch = global_batch_slices(train, distributed.world_size())[r]
    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1)
    losses = step(batch, step_generator(r))
    opt.zero_grad()
    losses["loss"].backward()
    opt.step()
    return {"loss": float(losses["loss"]),
            "weights": {f"{k}.{n}": p.detach().clone() for k, m in modules.items() for n, p in m.named_parameters()}}


def main() -> None:
    data_csv, out = Path(sys.argv[1]), Path(sys.argv[2])
    torch.set_num_threads(1)
    cfg = config(data_csv, out)
    from deeppneumonia.training.pipeline import open_run, prepare_data

    data = prepare_data(cfg, progress=False)
    assert distributed.is_distributed() and distributed.world_size() == 2
    classes = data.manifest.classes
    result: dict = {"rank": distributed.rank()}
    for stage in ("pretrain", "train"):
        result[f"{stage}_step"] = one_step(stage, cfg, data.train, data.val, classes)
    run_dir = open_run(cfg)
    for stage in ("pretrain", "train"):
        task, rt = make_task(stage, cfg, data.train, data.val, classes)
        optim = cfg.pretrain.optim if stage == "pretrain" else cfg.train.optim
        fit(task, optim, run_dir / stage, rt, seed=0, progress=False)
        result[f"{stage}_fit"] = {k: v.detach().clone() for m in task.modules().values() for k, v in m.state_dict().items()}
    torch.save(result, out / f"rank{distributed.rank()}.pt")
    distributed.cleanup()


if __name__ == "__main__":
    main()
