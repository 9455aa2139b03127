"""Training throughput at 1 and 2 processes (torchrun, gloo on CPU / NCCL on GPUs) against the model alone.

For each stage and world size, the full training step of the toolkit (cache -> sharded batch -> device
augmentation -> DDP forward/backward -> SGD; SimCLR with negatives gathered across ranks) runs for
``--steps`` steps after ``--warmup``; images/s count the global batch. The reference, measured in the
same run, is the model alone on synthetic in-memory tensors (one process, same per-process batch, no data
path, no augmentation, no loss extras): the bar is the toolkit's 1-process rate >= 90 % of it.

    python benchmarks/distributed_scaling.py --size 64 --batch 64 --steps 10      # CPU, a few minutes
    python benchmarks/distributed_scaling.py --size 224 --batch 256 --device cuda --procs 1   # one GPU

Data: ``--data`` (default the shipped NIH sample, 200 images; pass ../shared/data/siim-covid19 for SIIM).
``--compile`` compiles the networks (``run.compile``: each block, after SyncBatchNorm) in both the toolkit's
step and the model-only reference; the warm-up steps then include the compilation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def _config(args: argparse.Namespace, out: Path):  # type: ignore[no-untyped-def]
    from deeppneumonia.config import load_config

    return load_config(None, [
        f"data.path={args.data}", f"data.size={args.size}", f"data.cache_dir={args.cache_dir}",
        f"pretrain.optim.batch_size={args.batch}", f"train.optim.batch_size={args.batch}", "train.pretrained=false",
        f"run.out_dir={out}", "run.progress=false", f"run.device={args.device}", f"run.precision={args.precision}",
        f"run.compile={str(args.compile).lower()}"])


def _time_steps(step, batches, opt, steps: int, warmup: int, sync) -> float:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(0)
    t0 = 0.0
    for i in range(warmup + steps):
        if i == warmup:
            sync()
            t0 = time.perf_counter()
        losses = step(next(batches), g)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
    sync()
    return time.perf_counter() - t0


def worker(args: argparse.Namespace) -> None:
    """One process of the torchrun job: time both stages, rank 0 prints a JSON line."""
    from deeppneumonia.runtime import distributed

    result = measure(args)
    if distributed.is_main():
        print("RESULT " + json.dumps(result), flush=True)
    distributed.cleanup()


def measure(args: argparse.Namespace) -> dict[str, object]:
    """Both stages' training rates (images/s, global batch) in this process (one rank under torchrun)."""
    from deeppneumonia.runtime import distributed
    from deeppneumonia.training.loop import _wrap
    from deeppneumonia.training.pipeline import place_data, prepare_data, runtime_for
    from deeppneumonia.training.simclr import SimCLRTask
    from deeppneumonia.training.supervised import SupervisedTask

    out = Path(tempfile.mkdtemp())
    cfg = _config(args, out)
    data = prepare_data(cfg, progress=False)
    rt = runtime_for(cfg)
    place_data(cfg, data, rt)
    sync = torch.cuda.synchronize if rt.device.type == "cuda" else (lambda: None)
    result = {"world": distributed.world_size(), "device": str(rt.device), "dtype": str(rt.dtype)}
    m = data.manifest
    for stage in ("pretrain", "train"):
        task = (SimCLRTask(cfg, data.train, data.val, rt, multiclass=True) if stage == "pretrain"
                else SupervisedTask(cfg, data.train, data.val, rt, m.classes, m.task))
        modules = task.modules()
        for mod in modules.values():
            mod.to(rt.device).to(memory_format=rt.memory_format).train()
        step = _wrap(task, modules, rt, sync_bn=True, compile=args.compile)
        opt = torch.optim.SGD([p for mod in modules.values() for p in mod.parameters()], lr=1e-3, momentum=0.9)

        def forever(task=task):  # type: ignore[no-untyped-def]
            epoch = 0
            while True:
                yield from task.train_batches(epoch)
                epoch += 1

        with rt.autocast():
            seconds = _time_steps(step, forever(), opt, args.steps, args.warmup, sync)
        result[stage] = args.steps * args.batch / seconds
    return result


def model_only(args: argparse.Namespace, per_process_batch: int) -> dict[str, float]:
    """The reference: the same networks on synthetic in-memory tensors, one process."""
    from deeppneumonia.losses import InfoNCELoss
    from deeppneumonia.models.factory import build_classifier
    from deeppneumonia.models.projector import Projector
    from deeppneumonia.models.resnet import STAGE_CHANNELS
    from deeppneumonia.runtime.device import compile_blocks, resolve_runtime

    rt = resolve_runtime(args.device, args.precision, True)
    sync = torch.cuda.synchronize if rt.device.type == "cuda" else (lambda: None)
    x = torch.randn(per_process_batch, 1, args.size, args.size, device=rt.device).contiguous(
        memory_format=rt.memory_format)
    y = torch.randint(0, 4, (per_process_batch,), device=rt.device)
    out: dict[str, float] = {}
    for stage in ("pretrain", "train"):
        model = build_classifier(4, "resnet18").to(rt.device).to(memory_format=rt.memory_format).train()
        if args.compile:
            compile_blocks(model)
        if stage == "pretrain":
            model.fc = torch.nn.Identity()  # type: ignore[assignment]
            proj = Projector(STAGE_CHANNELS["resnet18"][-1], 512, 128).to(rt.device)
            loss_fn = InfoNCELoss(0.2)
            params = [*model.parameters(), *proj.parameters()]

            def step(_b, _g, model=model, proj=proj, loss_fn=loss_fn):  # type: ignore[no-untyped-def]
                z = proj(model(torch.cat([x, x])))
                return {"loss": loss_fn(*z.chunk(2))}
        else:
            params = list(model.parameters())

            def step(_b, _g, model=model):  # type: ignore[no-untyped-def]
                return {"loss": torch.nn.functional.cross_entropy(model(x).float(), y)}

        opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)

        def none():  # type: ignore[no-untyped-def]
            while True:
                yield None

        with rt.autocast():
            seconds = _time_steps(step, none(), opt, args.steps, args.warmup, sync)
        out[stage] = args.steps * per_process_batch / seconds
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="sample:nih")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=64, help="global batch")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="auto")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--json", default="", help="also write the rows and the model-only rates to this file")
    p.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "dp-bench-cache"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    if args.worker:
        worker(args)
        return
    rows = []
    for n in args.procs:
        threads = max(1, (os.cpu_count() or 2) // n) if args.device == "cpu" else 4
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), __file__,
               "--worker", *sys.argv[1:]]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            sys.exit(f"{n} process(es) failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        rows.append(json.loads(lines[0].removeprefix("RESULT ")))
    torch.set_num_threads(os.cpu_count() or 1)
    ref = model_only(args, args.batch)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"ResNet18, {args.size} px, global batch {args.batch}, {args.steps} timed steps after {args.warmup}; "
          f"device {rows[0]['device']}, autocast {rows[0]['dtype']}; torch {torch.__version__}; "
          f"{os.cpu_count()} CPUs, load average {load:.1f}\n")
    print("| processes | Stage I img/s | Stage II img/s | Stage I vs model-only | Stage II vs model-only |")
    print("|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['world']} | {r['pretrain']:.1f} | {r['train']:.1f} | {r['pretrain'] / ref['pretrain']:.2f} | "
              f"{r['train'] / ref['train']:.2f} |")
    print(f"| model only (1 process, in-memory tensors) | {ref['pretrain']:.1f} | {ref['train']:.1f} | 1.00 | 1.00 |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "model_only": ref, "size": args.size, "batch": args.batch}))


if __name__ == "__main__":
    main()
