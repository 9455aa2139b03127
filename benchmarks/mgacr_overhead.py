"""What MGACR costs in Stage II: the training step with it against the plain step, same size, same batches.

Issue 17's bar: Stage II with MGACR at most 15 % slower than the plain step at the same size. Every row is the
toolkit's own Stage II step (``SupervisedTask.training_step``, backward, SGD, under the run's autocast) on the
same cached batches of the preset's data at the preset's size and batch:

* ``plain``: MGACR off, cross-entropy (Table I row 1);
* ``MGACR, preset layers``: the preset's heads, form, box policy and the class-balanced focal loss (row 5);
* ``MGACR, all four layers``: the same on layers 1-4 (the paper's placement).

The per-epoch gradient-norm diagnostic (``train.mgacr.grad_norm_steps``) is off in these rows; its own cost is
printed below the table (one measured step against the preset's MGACR step, and what its steps add to an epoch).
Rows are timed in interleaved rounds (A B C A B C ...) and each row's median round is reported, so a slow drift
of the machine's load hits every row alike; the load average is printed before and after.

    python benchmarks/mgacr_overhead.py --preset siim-128-cpu --data ../shared/data/siim-covid19
    python benchmarks/mgacr_overhead.py --preset quick-boxes --size 32 --batch 4 --steps 1 --rounds 1   # smoke
"""

from __future__ import annotations

import argparse
import tempfile
from functools import partial
from pathlib import Path

import torch
from _step import add_step_options, base_overrides, interleaved_rates, load_average, sgd, timed_steps
from _table import machine_line  # benchmarks/_step.py, _table.py (the script's own folder is on sys.path)

from deeppneumonia.config import Config, load_config
from deeppneumonia.training.pipeline import PreparedData, place_data, prepare_data, runtime_for
from deeppneumonia.training.supervised import SupervisedTask

PLAIN = ["train.mgacr.attention=false", "train.mgacr.feature=false", "train.loss.kind=ce"]


def configs(args: argparse.Namespace, out: Path) -> dict[str, Config]:
    """The rows' configs: the preset with this run's data, size, batch and precision; diagnostics off."""
    base = base_overrides(args, out, [f"run.precision={args.precision}", "train.pretrained=false"])
    preset = load_config(args.preset, base)
    layers = ",".join(str(x) for x in preset.train.mgacr.layers)
    return {"plain": load_config(args.preset, [*base, *PLAIN]),
            f"MGACR, preset layers [{layers}]": preset,
            "MGACR, all four layers": load_config(args.preset, [*base, "train.mgacr.layers=[1,2,3,4]"])}


def build(cfg: Config, data: PreparedData) -> tuple[SupervisedTask, torch.optim.Optimizer]:
    """The row's task (networks on the device, training mode) and an SGD optimizer over its parameters."""
    rt = runtime_for(cfg)
    task = SupervisedTask(cfg, data.train, data.val, rt, data.manifest.classes, data.manifest.task)
    task.epoch_step = 10**9  # past the epoch's gradient-norm steps: the diagnostic is timed on its own
    for m in task.modules().values():
        m.to(rt.device).to(memory_format=rt.memory_format).train()
    return task, sgd(task.modules().values())


def measure(args: argparse.Namespace) -> dict[str, object]:
    """Images/s of each row (median over rounds), the diagnostic step's seconds, and the setting's facts."""
    out = Path(tempfile.mkdtemp())
    cfgs = configs(args, out)
    first = next(iter(cfgs.values()))
    data = prepare_data(first, progress=False)
    place_data(first, data, runtime_for(first))  # as a run does: resident or pinned on a GPU, nothing on CPU
    batch = min(first.train.optim.batch_size, len(data.train))
    batches = list(data.train.iterate(batch, shuffle=True, seed=0, drop_last=True))[:max(1, args.steps)]
    rows = {name: build(cfg, data) for name, cfg in cfgs.items()}
    rates = interleaved_rates({name: partial(timed_steps, task.rt, task.training_step, opt, batches)
                               for name, (task, opt) in rows.items()}, args, batch)
    task, opt = rows[list(rows)[1]]  # the preset's MGACR
    gn_steps = task.tcfg.mgacr.grad_norm_steps
    task.epoch_step = 0  # a step that measures the gradient norms (as the first steps of every epoch do)
    gn = timed_steps(task.rt, task.training_step, opt, batches[:1], 1)
    task.epoch_step = 10**9
    no_gn = timed_steps(task.rt, task.training_step, opt, batches[:1], 1)
    return {"rates": rates, "batch": batch, "size": first.data.size, "autocast": task.rt.dtype,
            "gn_step_seconds": gn, "step_seconds": no_gn, "grad_norm_steps": gn_steps,
            "steps_per_epoch": task.steps_per_epoch()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_step_options(p)
    p.add_argument("--precision", default="auto")
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    load0 = load_average()
    r = measure(args)
    load1 = load_average()
    rates: dict[str, float] = r["rates"]  # type: ignore[assignment]
    print(machine_line(r["autocast"], f"{r['size']} px, batch {r['batch']}, {args.steps} steps x {args.rounds} "
                       f"interleaved rounds (median) after {args.warmup}; preset {args.preset}; load average "
                       f"{load0:.2f} before, {load1:.2f} after\n"))
    plain = next(iter(rates.values()))
    print("| Stage II step | images/s | vs plain | slower than plain |")
    print("|---|---:|---:|---:|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:.1f} | {rate / plain:.2f} | {plain / rate - 1:+.0%} |")
    gn, step = float(r["gn_step_seconds"]), float(r["step_seconds"])  # type: ignore[arg-type]
    n, per_epoch = int(r["grad_norm_steps"]), int(r["steps_per_epoch"])  # type: ignore[call-overload]
    extra = n * max(gn - step, 0.0) / (per_epoch * step) if per_epoch else float("nan")
    print(f"\ngradient-norm diagnostic step: {gn * 1000:.0f} ms against {step * 1000:.0f} ms; its {n} step(s) per "
          f"epoch of {per_epoch} add {extra:.1%} to an epoch")


if __name__ == "__main__":
    main()
