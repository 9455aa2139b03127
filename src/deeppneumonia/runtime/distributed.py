"""Data-parallel training on PyTorch's own engine: ``torchrun`` + DistributedDataParallel (NCCL or gloo).

Launch any training command under ``torchrun`` and it runs on all processes::

    torchrun --nproc_per_node 4 -m deeppneumonia.cli run -c paper data.path=...

``setup()`` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and joins the process
group: NCCL when the run's device is CUDA (one GPU per process, ``cuda:LOCAL_RANK``), gloo on CPU. Without
those variables it does nothing and everything runs in one process as before.

What each part does under DDP (docs/distributed.md):

* ``optim.batch_size`` is the *global* batch: each of the W processes takes its 1/W slice of every batch
  of one shared, seeded order (``CachedSplit.iterate(shard=True)``), so the steps per epoch, the schedule
  and a checkpoint mean the same at every world size, and a run resumes at another world size.
* SimCLR gathers the projections of all ranks with gradients (``gather_with_grad``) so every anchor is
  contrasted against the 2N - 2 views of the *global* batch, as in one process.
* Class counts for the balanced loss come from the whole training split (every rank indexes all of it).
* Training losses are averaged across ranks before logging; validation runs on rank 0 while the others wait.
* Only rank 0 writes checkpoints, metrics, TensorBoard logs and reports.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import warnings
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import Tensor

log = logging.getLogger(__name__)


def is_distributed() -> bool:
    """Whether a torch.distributed process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """Number of processes in the group (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """This process's rank on its machine, from ``LOCAL_RANK`` (0 when not distributed)."""
    return int(os.environ.get("LOCAL_RANK", "0")) if is_distributed() else 0


def is_main() -> bool:
    """Whether this is rank 0 (always True when not distributed)."""
    return rank() == 0


def setup(device: str = "auto", timeout_minutes: float = 60.0) -> bool:
    """Join the process group torchrun describes in the environment; return True when distributed.

    Idempotent. The backend is NCCL when the run goes to CUDA, gloo otherwise. On CUDA each process
    takes the GPU ``LOCAL_RANK``. The timeout is long because rank 0 validates alone while the others
    wait at a barrier.
    """
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    use_cuda = torch.cuda.is_available() and (device == "auto" or device.startswith("cuda"))
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    log.info("rank %d of %d joined (%s)", rank(), world_size(), backend)
    if not is_main():  # one voice: the other ranks only warn
        logging.getLogger("deeppneumonia").setLevel(logging.WARNING)
    return True


def cleanup() -> None:
    """Leave the process group, if one is initialised."""
    if is_distributed():
        dist.destroy_process_group()


def device_for(device: str) -> str:
    """The device of this process: ``auto``, ``cuda`` and ``cuda:N`` become ``cuda:LOCAL_RANK`` under torchrun.

    One GPU per process: an explicit index (e.g. ``run.device=cuda:0`` from a single-GPU config) would put every
    rank on that GPU, so it is replaced by the local rank with a warning.
    """
    if is_distributed() and torch.cuda.is_available() and (device == "auto" or device.startswith("cuda")):
        mine = f"cuda:{local_rank()}"
        if device not in ("auto", "cuda", mine):
            log.warning("run.device=%s under torchrun: rank %d uses %s (one GPU per process)", device, rank(), mine)
        return mine
    return device


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


@contextlib.contextmanager
def main_first(local: bool = True) -> Iterator[None]:
    """Let (local) rank 0 run the block first, e.g. build a cache the others then only open."""
    first = (local_rank() if local else rank()) == 0
    if not first:
        barrier()
    try:
        yield
    finally:
        if first:
            barrier()


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` of every rank in rank order (dim 0), differentiably.

    The backward pass sums each rank's gradient contributions back to the rank that owns the rows
    (``torch.distributed.nn.functional.all_gather``), so with a per-rank loss over the local anchors and
    DDP's gradient averaging the update equals the single-process one on the global batch.
    """
    if not is_distributed():
        return x
    from torch.distributed.nn.functional import all_gather

    with warnings.catch_warnings():  # public and tested here; its successors are private and still moving
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*all_gather.*deprecated")
        return torch.cat(all_gather(x.contiguous()), dim=0)


def mean_across_ranks(values: dict[str, float]) -> dict[str, float]:
    """Average a dict of floats over the ranks (every rank gets the result)."""
    if not is_distributed() or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return {k: float(v) / world_size() for k, v in zip(keys, t.cpu().tolist(), strict=True)}


def broadcast_object(obj: object, src: int = 0) -> object:
    """``obj`` of rank ``src`` on every rank (a picklable object; ``obj`` itself when not distributed)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: object) -> list[object]:
    """The ``obj`` of every rank, in rank order, on every rank (``[obj]`` when not distributed)."""
    if not is_distributed():
        return [obj]
    out: list[object] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out
