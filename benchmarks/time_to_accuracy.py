"""Minutes of training (and images seen) to reach a fixed validation mAP: current recipe against an improved one.

For each recipe (``--current`` preset, default ``siim-cpu``, and ``--improved``, default ``siim-fast-cpu``, each
with its own extra overrides ``--current-set`` / ``--improved-set``, so one preset with and without a lever is a
pair) x model (``plain``: ResNet18 from scratch with every technique of Table I off and cross-entropy; ``full``:
Stage I + MGACR + the class-balanced focal loss, as the preset says; ``mgacr``: the ``siim-mgacr-cpu``
preset's MGACR settings, loss and Stage I switch, read from the preset: MGACR with 1x1-conv heads at weights 3/1 on
layers 2-3, no Stage I, cross-entropy) x seed, the
toolkit's own pipeline trains
(``training/pipeline.py``: ``run_pretrain`` / ``run_train`` with a config), all in this one process on this one
machine. The per-epoch validation log (``train/metrics.jsonl``) gives the first epoch whose ``val_<metric>``
(default ``study_map``, the validation study mAP; ``map`` where studies have one image each) reaches the target;
the minutes are the logged training seconds up to that epoch, plus all of Stage I for the full method, and the
images seen are steps x batch (Stage I counted once per image, not per view). The target defaults to the plain
ResNet18's mean validation value at the current recipe's final epoch (the bar of issue 17); ``--target`` fixes it.
Since the target is that mean, the current plain recipe reaches it by its last epoch in about half the seeds; its
full training time is the reference the other rows are quoted against (``x current``: minutes to target over the
current plain recipe's mean minutes of training). The test study mAP of each run (its best checkpoint) is reported
too, with its mean and sd over the seeds.

    python benchmarks/time_to_accuracy.py --data ../shared/data/siim-covid19 --seeds 0 1 2     # hours on 2 cores
    python benchmarks/time_to_accuracy.py --data ../shared/data/siim-covid19 --models plain mgacr \
        --improved siim-cpu --improved-set train.optim.resize_from=64                          # one lever, two models
    python benchmarks/time_to_accuracy.py --data sample:kermany --size 64 --epochs 2 --seeds 0 \\
        --set data.val_fraction=0.3 data.test_fraction=0.3                                      # about a minute

A rerun with the same ``--out`` resumes: finished runs are read back, a killed one continues from its last.pt.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
MGACR_PRESET = "siim-mgacr-cpu"


def mgacr_overrides(preset: str = MGACR_PRESET) -> list[str]:
    """The ``mgacr`` model: the MGACR settings, loss and Stage I switch of ``preset``, read from it (so the benchmark
    cannot drift from the preset); its schedule is the recipe's, not the preset's."""
    train = load_config(preset).to_dict()["train"]
    over = [f"train.pretrained={str(train['pretrained']).lower()}", f"train.loss.kind={train['loss']['kind']}"]
    return over + [f"train.mgacr.{k}={json.dumps(v)}" for k, v in train["mgacr"].items()]


MODELS = {"plain": PLAIN, "full": [], "mgacr": mgacr_overrides()}
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


def make_config(args: argparse.Namespace, recipe: str, model: str, seed: int) -> Config:
    preset, extra = (args.current, args.current_set) if recipe == "current" else (args.improved, args.improved_set)
    over = [f"data.path={args.data}", f"run.out_dir={Path(args.out) / recipe / model / f'seed{seed}'}",
            f"run.seed={seed}", "run.progress=false"]
    if args.cache_dir:
        over.append(f"data.cache_dir={args.cache_dir}")
    if args.size:
        over.append(f"data.size={args.size}")
    if args.epochs:
        over += [f"train.optim.epochs={args.epochs}", f"pretrain.optim.epochs={args.epochs}"]
    return load_config(preset, [*over, *MODELS[model], *args.set, *extra])


def one_run(cfg: Config, data: PreparedData) -> dict[str, Any]:
    run = Path(cfg.run.out_dir)
    if cfg.train.pretrained:
        run_pretrain(cfg, data)
    test = run_train(cfg, data)
    bs = min(cfg.train.optim.batch_size, len(data.train))
    pre_bs = min(cfg.pretrain.optim.batch_size, len(data.train))
    return {"log": read_log(run / "train" / "metrics.jsonl"), "stage1_seconds": (logged_seconds(run / "pretrain") or 0.0)
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
    """The first epoch (1-based) whose validation value reaches ``target``, the minutes and images to it, and the
    run's minutes in all (Stage I included)."""
    seconds, images = r["stage1_seconds"], r["stage1_images"]
    total = (seconds + sum(float(x["train_seconds"]) for x in r["log"])) / 60
    for i, rec in enumerate(r["log"]):
        seconds += float(rec["train_seconds"])
        images += r["images_per_epoch"]
        if rec.get(key) is not None and float(rec[key]) >= target:
            return {"epoch": i + 1, "minutes": seconds / 60, "images": images, "total_minutes": total}
    return {"epoch": None, "minutes": None, "images": None, "total_minutes": total}


def mean_sd(values: list[float]) -> str:
    values = [v for v in values if v is not None and v == v]
    if not values:
        return "n/a"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def read_log(f: Path) -> list[dict[str, Any]]:
    """A per-epoch ``metrics.jsonl`` (empty when the file is missing)."""
    return [json.loads(x) for x in f.read_text().splitlines() if x.strip()] if f.is_file() else []


def recorded(rec: Path, name: str) -> dict[str, Any] | None:
    """A run read back from its ``--record`` files (a later session continues where the last stopped)."""
    f = rec / f"{name}.json"
    if not f.is_file():
        return None
    r: dict[str, Any] = json.loads((rec / f"{name}_run.json").read_text())
    r["log"] = read_log(rec / f"{name}_metrics.jsonl")
    r["test"] = json.loads(f.read_text())
    return r


def record(rec: Path, name: str, run_dir: Path, r: dict[str, Any]) -> None:
    """Copy a finished run's per-epoch log, test metrics and test predictions to ``rec`` (commit them)."""
    rec.mkdir(parents=True, exist_ok=True)
    for src, dst in (("train/metrics.jsonl", f"{name}_metrics.jsonl"), ("test_predictions.npz", f"{name}.npz")):
        if (run_dir / src).is_file():
            shutil.copyfile(run_dir / src, rec / dst)
    (rec / f"{name}_run.json").write_text(json.dumps({k: v for k, v in r.items() if k not in ("log", "test")}))
    (rec / f"{name}.json").write_text(json.dumps(r["test"], indent=1, default=str))  # last: marks the run done


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/siim-covid19")
    p.add_argument("--current", default="siim-cpu", help="preset (or YAML) of the current recipe")
    p.add_argument("--improved", default="siim-fast-cpu", help="preset (or YAML) of the improved recipe")
    p.add_argument("--current-set", nargs="*", default=[], help="overrides of the current recipe only")
    p.add_argument("--improved-set", nargs="*", default=[], help="overrides of the improved recipe only")
    p.add_argument("--models", nargs="+", default=["plain", "full"], choices=list(MODELS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--metric", default="study_map", help="validation metric (a key of metrics.jsonl without val_)")
    p.add_argument("--target", type=float, default=None,
                   help="default: the plain model's mean value at the current recipe's final epoch")
    p.add_argument("--size", type=int, default=0, help="override data.size of both recipes")
    p.add_argument("--epochs", type=int, default=0, help="override the epochs of both stages of both recipes")
    p.add_argument("--set", nargs="*", default=[], help="more overrides for every run, e.g. run.threads=2")
    p.add_argument("--cache-dir", default="")
    p.add_argument("--record", default="", help="copy each finished run's log, test metrics and predictions here "
                   "as <recipe>_<model>_seed<S>.*; a run whose record exists is read back, not trained")
    p.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "dp-time-to-accuracy"))
    args = p.parse_args(argv)
    start_line = cpu_line()
    names = {"current": " ".join([args.current, *args.current_set]),
             "improved": " ".join([args.improved, *args.improved_set])}
    results: dict[tuple[str, str, int], dict[str, Any]] = {}
    prepared: dict[str, PreparedData] = {}
    autocast: object = None
    rec = Path(args.record) if args.record else None
    for seed in args.seeds:  # seed-major, recipes interleaved: a load change hits both recipes alike
        for recipe in names:
            for model in args.models:
                cfg = make_config(args, recipe, model, seed)
                autocast = runtime_for(cfg).dtype
                name = f"{recipe}_{model}_seed{seed}"
                done = recorded(rec, name) if rec else None
                if done is not None:
                    results[(recipe, model, seed)] = done
                    continue
                key = json.dumps(cfg.to_dict()["data"], sort_keys=True)
                if key not in prepared:
                    prepared[key] = prepare_data(cfg, progress=False)
                print(f"[{names[recipe]} / {model} / seed {seed}] {cfg.run.out_dir}", file=sys.stderr, flush=True)
                results[(recipe, model, seed)] = r = one_run(cfg, prepared[key])
                if rec:
                    record(rec, name, Path(cfg.run.out_dir), r)
    first = next(iter(results.values()))
    key = metric_key(first["log"], args.metric)
    target = args.target
    ref_runs = [r for (rc, mo, _), r in results.items() if rc == "current" and mo == "plain"]
    if target is None:
        ref = [float(v) for v in (r["log"][-1].get(key) for r in ref_runs if r["log"]) if v is not None]
        target = statistics.mean(ref) if ref else float("nan")
    ref_minutes = statistics.mean(to_target(r, key, float("inf"))["total_minutes"] for r in ref_runs) \
        if ref_runs else float("nan")
    test_key = args.metric if args.metric in first["test"] else args.metric.removeprefix("study_")
    print(f"\n{machine_line(autocast, f'time to validation {key[4:]} >= {target:.4f}')}")
    print(f"machine: {cpu_line()} (at the start: {start_line.rsplit(';', 1)[1].strip()})")
    print(f"reference: the current recipe's plain model, {ref_minutes:.1f} min of training (mean over the seeds)\n")
    print(f"| recipe | model | epochs to target (per seed) | minutes to target | x current | minutes in all | "
          f"final val {key[4:]} | test {test_key} |")
    print("|---|---|---|---|---|---|---|---|")
    summary: dict[str, Any] = {"target": target, "metric": key, "machine": cpu_line(), "torch": torch.__version__,
                               "recipes": names, "reference_minutes": ref_minutes, "rows": []}
    for recipe in names:
        for model in args.models:
            runs = [(s, results[(recipe, model, s)]) for s in args.seeds]
            hits = [to_target(r, key, target) for _, r in runs]
            mins = [h["minutes"] for h in hits if h["minutes"] is not None]
            epochs = ", ".join(str(h["epoch"]) if h["epoch"] else "not reached" for h in hits)
            ratio = f"{statistics.mean(mins) / ref_minutes:.2f}" if mins and len(mins) == len(hits) else \
                f"{len(mins)}/{len(hits)} reached"
            finals = [r["log"][-1].get(key) if r["log"] else None for _, r in runs]
            tests = [r["test"].get(test_key) for _, r in runs]
            total = [h["total_minutes"] for h in hits]
            print(f"| {names[recipe]} | {model} | {epochs} | {mean_sd(mins)} | {ratio} | {mean_sd(total)} | "
                  f"{mean_sd(finals)} | {mean_sd(tests)} |")
            summary["rows"].append({"recipe": names[recipe], "model": model, "seeds": args.seeds,
                                    "to_target": hits, "final_val": finals, "test": tests})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "time_to_accuracy.json").write_text(json.dumps(summary, indent=1, default=str))
    return summary


if __name__ == "__main__":
    main()
