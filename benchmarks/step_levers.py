"""The speed levers of one training step, side by side: precision, memory format, torch.compile, image side.

Every row is the toolkit's own plain Stage II step (``SupervisedTask`` with MGACR off and cross-entropy, wrapped
by the loop's ``_wrap`` as a run does, then backward and SGD) on the same cached batches of the preset's data,
with one setting changed from the reference row (fp32, contiguous, eager, the preset's side):

* ``fp32, channels_last`` (``run.channels_last``, the default);
* ``bf16 autocast`` (``run.precision=bf16``; fast only on CPUs with AVX512-BF16 / AMX and on GPUs);
* ``+ torch.compile`` (``run.compile=true``; compiled once in the warm-up, which is not timed);
* ``+ side 96`` / ``side 64``: a progressive-resizing epoch (``optim.resize_from``) at that side.

Rows are timed in interleaved rounds (A B C ... A B C ...) and each row's median round is reported. The step's
score is not changed by the first three levers beyond float rounding (bf16: see docs/serving.md for inference
parity); what a smaller side does to the score needs training runs (docs/benchmarks.md).

    python benchmarks/step_levers.py --data ../shared/data/siim-covid19 [--compile]
    python benchmarks/step_levers.py --preset siim-128-cpu --size 32 --batch 4 --steps 1 --rounds 1   # smoke
"""

from __future__ import annotations

import argparse
import tempfile
from functools import partial
from pathlib import Path

from _step import add_step_options, base_overrides, interleaved_rates, load_average, sgd, timed_steps
from _table import machine_line  # benchmarks/_step.py, _table.py (the script's own folder is on sys.path)

from deeppneumonia.config import load_config
from deeppneumonia.data.batches import resize_batch
from deeppneumonia.training.loop import _wrap
from deeppneumonia.training.pipeline import prepare_data, runtime_for
from deeppneumonia.training.supervised import SupervisedTask

PLAIN = ["train.mgacr.attention=false", "train.mgacr.feature=false", "train.loss.kind=ce", "train.pretrained=false"]


def rows_of(args: argparse.Namespace) -> list[tuple[str, list[str], int]]:
    """(name, run overrides, side factor in 32-px steps below the full side: 0 = full) of each row."""
    rows = [("fp32, contiguous (reference)", ["run.precision=fp32", "run.channels_last=false"], 0),
            ("fp32, channels_last", ["run.precision=fp32", "run.channels_last=true"], 0),
            ("bf16 autocast, channels_last", ["run.precision=bf16", "run.channels_last=true"], 0)]
    if args.compile:
        rows.append(("bf16, channels_last, torch.compile",
                     ["run.precision=bf16", "run.channels_last=true", "run.compile=true"], 0))
    rows += [(f"bf16, channels_last, side -{32 * k} px", ["run.precision=bf16", "run.channels_last=true"], k)
             for k in (1, 2)]
    return rows


def measure(args: argparse.Namespace) -> dict[str, object]:
    """Images/s of each row (median over interleaved rounds) and the run's facts."""
    out = Path(tempfile.mkdtemp())
    base = base_overrides(args, out, PLAIN)
    first = load_config(args.preset, base)
    data = prepare_data(first, progress=False)
    full = first.data.size
    batch = min(first.train.optim.batch_size, len(data.train))
    batches = list(data.train.iterate(batch, shuffle=True, seed=0, drop_last=True))[:max(1, args.steps)]
    built = []
    for name, over, k in rows_of(args):
        cfg = load_config(args.preset, [*base, *over])
        rt = runtime_for(cfg)
        task = SupervisedTask(cfg, data.train, data.val, rt, data.manifest.classes, data.manifest.task)
        task.epoch_step = 10**9  # no gradient-norm diagnostic
        mods = task.modules()
        for m in mods.values():
            m.to(rt.device).to(memory_format=rt.memory_format).train()
        step = _wrap(task, mods, rt, sync_bn=False, compile=cfg.run.compile)
        opt = sgd(mods.values())
        side = max(32, full - 32 * k) if k else full
        own = [resize_batch(b, side) for b in batches]
        built.append((name, side, rt, step, opt, own))

    rates = interleaved_rates({name: partial(timed_steps, rt, step, opt, own)
                               for name, _, rt, step, opt, own in built}, args, batch)
    return {"rates": rates, "sides": {b[0]: b[1] for b in built}, "batch": batch, "size": full}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_options(p)
    p.add_argument("--compile", action="store_true", help="add the torch.compile row (slow to compile on a CPU)")
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    load0 = load_average()
    r = measure(args)
    load1 = load_average()
    rates: dict[str, float] = r["rates"]  # type: ignore[assignment]
    sides: dict[str, int] = r["sides"]  # type: ignore[assignment]
    print(machine_line("per row", f"plain Stage II step, batch {r['batch']}, preset {args.preset}, {args.steps} steps x "
                       f"{args.rounds} interleaved rounds (median) after {args.warmup}; load average {load0:.2f} "
                       f"before, {load1:.2f} after\n"))
    ref = next(iter(rates.values()))
    print("| step | side | images/s | vs reference |")
    print("|---|---:|---:|---:|")
    for name, rate in rates.items():
        print(f"| {name} | {sides[name]} | {rate:.1f} | {rate / ref:.2f}x |")


if __name__ == "__main__":
    main()
