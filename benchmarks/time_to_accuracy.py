"""Minutes of training (and images seen) to reach a fixed validation mAP: current recipe against an improved one.

For each recipe (``--current`` preset, default ``siim-cpu``, and ``--improved``, default ``siim-fast-cpu``) x
model (``plain``: ResNet18 from scratch with every technique of Table I off and cross-entropy; ``full``: Stage I +
MGACR + the class-balanced focal loss, as the preset says) x seed, the toolkit's own pipeline trains
(``training/pipeline.py``: ``run_pretrain`` / ``run_train`` with a config), all in this one process on this one
machine. The per-epoch validation log (``train/metrics.jsonl``) gives the first epoch whose ``val_<metric>``
(default ``study_map``, the validation study mAP; ``map`` where studies have one image each) reaches the target;
the minutes are the logged training seconds up to that epoch, plus all of Stage I for the full method, and the
images seen are steps x batch (Stage I counted once per image, not per view). The target defaults to the plain
ResNet18's mean validation value at the current recipe's final epoch (the bar of issue 17); ``--target`` fixes it.
The test study mAP of each run (its best checkpoint) is reported too, with its mean and sd over the seeds.

    python benchmarks/time_to_accuracy.py --data ../shared/data/siim-covid19 --seeds 0 1 2     # hours on 2 cores
    python benchmarks/time_to_accuracy.py --data sample:kermany --size 64 --epochs 2 --seeds 0 \\
        --set data.val_fraction=0.3 data.test_fraction=0.3                                      # about a minute

A rerun with the same ``--out`` resumes: finished runs are read back, a killed one continues from its last.pt.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from _table import machine_line  # benchmarks/_table.py (the script's own folder is on sys.path)

from deeppneumonia.config import Config, load_config
from deeppneumonia.training.loop import logged_seconds
from deeppneumonia.training.pipeline import PreparedData, prepare_data, run_pretrain, run_train, runtime_for

PLAIN = ["train.pretrained=false", "train.mgacr.attention=false", "train.mgacr.feature=false", "train.loss.kind=ce"]
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni", "fma")


def cpu_line() -> str:
    """CPU model, the flags that decide the kernels (bf16, AVX-512, AMX), cores and the load average."""
    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    have = " ".join(f for f in CPU_FLAGS if f in flags) or "none of " + " ".join(CPU_FLAGS)
    return f"{model or 'unknown CPU'}; flags: {have}; {os.cpu_count()} cores; load average {load}"


def make_config(args: argparse.Namespace, preset: str, model: str, seed: int) -> Config:
    over = [f"data.path={args.data}", f"run.out_dir={Path(args.out) / preset / model / f'seed{seed}'}",
            f"run.seed={seed}", "run.progress=false"]
    if args.cache_dir:
        over.append(f"data.cache_dir={args.cache_dir}")
    if args.size:
        over.append(f"data.size={args.size}")
    if args.epochs:
        over += [f"train.optim.epochs={args.epochs}", f"pretrain.optim.epochs={args.epochs}"]
    if model == "plain":
        over += PLAIN
    return load_config(preset, [*over, *args.set])


def read_log(stage_dir: Path) -> list[dict[str, Any]]:
    f = stage_dir / "metrics.jsonl"
    return [json.loads(x) for x in f.read_text().splitlines() if x.strip()] if f.is_file() else []


def one_run(cfg: Config, data: PreparedData) -> dict[str, Any]:
    run = Path(cfg.run.out_dir)
    if cfg.train.pretrained:
        run_pretrain(cfg, data)
    test = run_train(cfg, data)
    bs = min(cfg.train.optim.batch_size, len(data.train))
    pre_bs = min(cfg.pretrain.optim.batch_size, len(data.train))
    return {"log": read_log(run / "train"), "stage1_seconds": (logged_seconds(run / "pretrain") or 0.0)
            if cfg.train.pretrained else 0.0,
            "stage1_images": cfg.pretrain.optim.epochs * (len(data.train) // pre_bs) * pre_bs
            if cfg.train.pretrained else 0,
            "images_per_epoch": max(1, len(data.train) // bs) * bs, "test": test}


def metric_key(log: list[dict[str, Any]], metric: str) -> str:
    key = f"val_{metric}"
    if log and key not in log[0] and metric.startswith("study_"):
        return f"val_{metric.removeprefix('study_')}"  # every study has one image: the image level is the study level
    return key


def to_target(r: dict[str, Any], key: str, target: float) -> dict[str, Any]:
    seconds, images = r["stage1_seconds"], r["stage1_images"]
    for rec in r["log"]:
        seconds += float(rec["train_seconds"])
        images += r["images_per_epoch"]
        if rec.get(key) is not None and float(rec[key]) >= target:
            return {"epoch": rec["epoch"], "minutes": seconds / 60, "images": images}
    return {"epoch": None, "minutes": None, "images": None}


def mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None and v == v]
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/siim-covid19")
    p.add_argument("--current", default="siim-cpu", help="preset (or YAML) of the current recipe")
    p.add_argument("--improved", default="siim-fast-cpu", help="preset (or YAML) of the improved recipe")
    p.add_argument("--models", nargs="+", default=["plain", "full"], choices=["plain", "full"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--metric", default="study_map", help="validation metric (a key of metrics.jsonl without val_)")
    p.add_argument("--target", type=float, default=None,
                   help="default: the plain model's mean value at the current recipe's final epoch")
    p.add_argument("--size", type=int, default=0, help="override data.size of both recipes")
    p.add_argument("--epochs", type=int, default=0, help="override the epochs of both stages of both recipes")
    p.add_argument("--set", nargs="*", default=[], help="more overrides for every run, e.g. run.threads=2")
    p.add_argument("--cache-dir", default="")
    p.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "dp-time-to-accuracy"))
    args = p.parse_args(argv)
    start_line = cpu_line()
    recipes = [args.current, args.improved]
    results: dict[tuple[str, str, int], dict[str, Any]] = {}
    prepared: dict[str, PreparedData] = {}
    autocast: object = None
    for seed in args.seeds:  # seed-major, recipes interleaved: a load change hits both recipes alike
        for preset in recipes:
            for model in args.models:
                cfg = make_config(args, preset, model, seed)
                key = json.dumps(cfg.to_dict()["data"], sort_keys=True)
                if key not in prepared:
                    prepared[key] = prepare_data(cfg, progress=False)
                autocast = runtime_for(cfg).dtype
                print(f"[{preset} / {model} / seed {seed}] {cfg.run.out_dir}", file=sys.stderr, flush=True)
                results[(preset, model, seed)] = one_run(cfg, prepared[key])
    first = next(iter(results.values()))
    key = metric_key(first["log"], args.metric)
    target = args.target
    if target is None:
        ref = [r["log"][-1].get(key) for (pr, mo, _), r in results.items() if pr == args.current and mo == "plain"]
        ref = [float(v) for v in ref if v is not None]
        target = statistics.mean(ref) if ref else float("nan")
    test_key = args.metric if args.metric in first["test"] else args.metric.removeprefix("study_")
    print(f"\n{machine_line(autocast, f'time to validation {key[4:]} >= {target:.4f}')}")
    print(f"machine: {cpu_line()} (at the start: {start_line.rsplit(';', 1)[1].strip()})\n")
    print(f"| recipe | model | epochs to target (per seed) | minutes to target | images seen to target | "
          f"final val {key[4:]} | test {test_key} |")
    print("|---|---|---|---|---|---|---|")
    summary: dict[str, Any] = {"target": target, "metric": key, "machine": cpu_line(), "torch": torch.__version__,
                               "rows": []}
    minutes: dict[tuple[str, str], list[float]] = {}
    for preset in recipes:
        for model in args.models:
            runs = [(s, results[(preset, model, s)]) for s in args.seeds]
            hits = [to_target(r, key, target) for _, r in runs]
            mins = [h["minutes"] for h in hits if h["minutes"] is not None]
            minutes[(preset, model)] = mins
            epochs = ", ".join(str(h["epoch"]) if h["epoch"] else "not reached" for h in hits)
            imgs = [h["images"] for h in hits if h["images"] is not None]
            finals = [r["log"][-1].get(key) if r["log"] else None for _, r in runs]
            tests = [r["test"].get(test_key) for _, r in runs]
            print(f"| {preset} | {model} | {epochs} | {mean_sd(mins)} | "
                  f"{statistics.mean(imgs) if imgs else 'n/a'} | {mean_sd(finals)} | {mean_sd(tests)} |")
            summary["rows"].append({"recipe": preset, "model": model, "seeds": args.seeds, "to_target": hits,
                                    "final_val": finals, "test": tests})
    for model in args.models:
        cur, new = minutes[(args.current, model)], minutes[(args.improved, model)]
        if cur and new and len(cur) == len(new) == len(args.seeds):
            print(f"\n{model}: the improved recipe needs {statistics.mean(new) / statistics.mean(cur):.2f}x the "
                  f"minutes of the current one to reach the target")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "time_to_accuracy.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


if __name__ == "__main__":
    main()
