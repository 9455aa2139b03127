"""Reproduce the paper's Table I (ablation) on any data set, several seeds, one command.

Rows (each adds one technique to the row above, the same budget per row):
  1 ResNet18                        2 + contrastive pre-training (Stage I)
  3 + mask-guided attention (Eqs. 2-4)   4 + feature contrastive regulation (Eq. 5)
  5 + class-balanced focal loss (Eq. 9)
The patient-grouped split is fixed (``data.split_seed``) so every row and seed is scored on the same
held-out patients; seeds change initialisation, batch order and augmentation. Stage I runs once per seed
and is shared by rows 2-5. Without boxes in the data, rows 3-4 are skipped (nothing to guide) and row 5
is pre-training + the class-balanced focal loss with MGACR off.
"""

from __future__ import annotations

import json
import logging
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deeppneumonia.config import Config, load_config
from deeppneumonia.errors import ConfigError
from deeppneumonia.pipeline import PreparedData, prepare_data, run_pretrain, run_train
from deeppneumonia.training.loop import logged_seconds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Row:
    name: str
    overrides: tuple[str, ...]
    pretrained: bool
    needs_boxes: bool = False


TABLE1 = (
    Row("ResNet18", ("train.mgacr.attention=false", "train.mgacr.feature=false", "train.loss.kind=ce"), False),
    Row("+ CL pre-train", ("train.mgacr.attention=false", "train.mgacr.feature=false", "train.loss.kind=ce"), True),
    Row("+ mask-guided attention", ("train.mgacr.attention=true", "train.mgacr.feature=false", "train.loss.kind=ce"),
        True, True),
    Row("+ feature CR", ("train.mgacr.attention=true", "train.mgacr.feature=true", "train.loss.kind=ce"), True, True),
    Row("+ CB focal loss (full)", ("train.mgacr.attention=true", "train.mgacr.feature=true", "train.loss.kind=cb_focal"),
        True, True),
)
COLUMNS = ("accuracy", "balanced_accuracy", "macro_f1", "study_map", "auroc_macro")


def _config(preset: str, overrides: list[str], out: Path, seed: int, extra: tuple[str, ...]) -> Config:
    return load_config(preset, [*overrides, f"run.seed={seed}", f"run.out_dir={out}", *extra])


def run_ablation(preset: str, overrides: list[str], seeds: list[int], out_dir: Path) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    base = load_config(preset, overrides)
    data: PreparedData = prepare_data(base, base.run.progress)
    has_boxes = any(r.boxes for r in data.manifest.records)
    results: dict[str, list[dict[str, Any]]] = {row.name: [] for row in TABLE1}
    for seed in seeds:
        seed_dir = out_dir / f"seed{seed}"
        encoder = seed_dir / "pretrain" / "encoder.safetensors"
        pre_cfg = _config(preset, overrides, seed_dir, seed, ())
        run_pretrain(pre_cfg, data)
        pre_seconds = logged_seconds(seed_dir / "pretrain")
        pre_minutes = pre_seconds / 60 if pre_seconds is not None else None
        for k, row in enumerate(TABLE1, start=1):
            extra = (*row.overrides, f"train.pretrained={str(row.pretrained).lower()}")
            if row.needs_boxes and not has_boxes:
                if k < len(TABLE1):
                    continue
                extra = (*extra, "train.mgacr.attention=false", "train.mgacr.feature=false")
            if row.pretrained:
                extra = (*extra, f"train.encoder={encoder}")
            cfg = _config(preset, overrides, seed_dir / f"row{k}", seed, extra)
            metrics = run_train(cfg, data)
            metrics["pretrain_minutes"] = pre_minutes if row.pretrained else 0.0
            results[row.name].append(metrics)
            log.info("seed %d, %s: %s", seed, row.name, {c: metrics.get(c) for c in COLUMNS})
    summary = {"preset": preset, "overrides": overrides, "seeds": seeds, "results": results,
               "data": base.data.path, "test_images": len(data.test), "test_patients":
               len({data.manifest.records[int(i)].patient_id for i in data.test.indices}),
               "hardware": hardware(), "has_boxes": has_boxes}
    (out_dir / "ablation.json").write_text(json.dumps(summary, indent=1))
    return summary


def hardware() -> dict[str, str]:
    import torchvision

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    return {"device": dev, "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
            "torch": torch.__version__, "torchvision": torchvision.__version__}


def _mean_sd(values: list[float | None]) -> str:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return "–"
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if v.size > 1 else f"{v.mean():.3f}"  # one run: no spread to show


def comparison_markdown(summary: dict[str, Any], command: str) -> str:
    cols = ("accuracy", "macro_f1", "study_map")
    row_seeds = summary.get("row_seeds", {})
    lines = [f"Data `{summary['data']}`; test part: {summary['test_images']} images of {summary['test_patients']} "
             f"held-out patients (the same as Table I). Mean ± sd over the seeds in the last column (its count where "
             f"the seeds were not recorded); KNN and the decision tree are deterministic: one run. Hardware: "
             f"{summary['hardware']['device']}.", "", f"Command: `{command}`", "",
             "| method | " + " | ".join(cols) + " | training min | seeds |", "|---|" + "---|" * (len(cols) + 2)]
    for name, runs in summary["results"].items():
        cells = [_mean_sd([r.get(c) for r in runs]) for c in cols] + [_mean_sd([r.get("train_minutes") for r in runs])]
        seeds = row_seeds.get(name)
        cells.append(",".join(map(str, seeds)) if seeds else str(len(runs)))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def ablation_markdown(summary: dict[str, Any], command: str) -> str:
    lines = [f"Data `{summary['data']}`; test part: {summary['test_images']} images of {summary['test_patients']} "
             f"held-out patients. Seeds {summary['seeds']}; mean ± sd over seeds. Hardware: "
             f"{summary['hardware']['device']}, torch {summary['hardware']['torch']}.", "",
             f"Command: `{command}`", "",
             "| row | " + " | ".join(COLUMNS) + " | Stage II min | Stage I min |",
             "|---|" + "---|" * (len(COLUMNS) + 2)]
    for name, runs in summary["results"].items():
        if not runs:
            continue
        cells = [_mean_sd([r.get(c) for r in runs]) for c in COLUMNS]
        cells.append(_mean_sd([r.get("train_minutes") for r in runs]))
        cells.append(_mean_sd([r.get("pretrain_minutes", 0.0) for r in runs]))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# VGG16 with batch norm, at VGG's own rate (0.01 at batch 256) scaled linearly to the preset's batch (0.00125 at
# the CPU presets' 32): from scratch, plain VGG16 stayed at the class prior in the CPU budget, and VGG16-BN at
# the ResNet rate 0.02 diverged (`python scripts/lr_probe.py --arch vgg16_bn`; docs/method.md).
# (name, arch, learning rate per image of the batch; None: the preset's own rate)
TABLE2_DEEP: tuple[tuple[str, str, float | None], ...] = (("VGG16-BN", "vgg16_bn", 0.01 / 256),
                                                          ("ResNet50", "resnet50", None))


def run_comparison(preset: str, overrides: list[str], seeds: list[int], out_dir: Path,
                   ablation: dict[str, Any] | None = None, deep: bool = True,
                   previous: Path | None = None) -> dict[str, Any]:
    """Table II: classical models on HOG + pixels, VGG16 and ResNet50 from scratch, and (from the ablation,
    or run here) ResNet18 and the full method. Same split and scoring as Table I.

    ``previous`` is the path of an earlier ``comparison.json`` of the same data and test patients: its rows are reused
    rather than re-run (to add the deep rows to a classical-only table, or to finish an interrupted one).
    Each row records the seeds it ran with (``row_seeds``), so rows may have different numbers of runs."""
    from deeppneumonia.baselines import CLASSICAL, fit_classical, split_features
    from deeppneumonia.evaluation.metrics import aggregate_by_group, scalar_metrics

    out_dir.mkdir(parents=True, exist_ok=True)
    base = load_config(preset, overrides)
    data = prepare_data(base, base.run.progress)
    train_f, test_f = split_features(data.train), split_features(data.test)
    studies = [data.manifest.records[int(i)].study_id for i in data.test.indices]
    test_split = _split_fingerprint(data)
    metric = scalar_metrics(False)
    results: dict[str, list[dict[str, Any]]] = {}
    row_seeds: dict[str, list[int]] = {}
    old = json.loads(previous.read_text()) if previous is not None else None
    reused, reused_seeds = _reusable_rows(old, base, test_split, len(data.test))
    for name in CLASSICAL:
        if name in reused:
            results[name], row_seeds[name] = reused[name], reused_seeds[name]
            continue
        for seed in seeds:
            probs, seconds = fit_classical(name, train_f, test_f, seed)
            m = metric(probs, test_f[1])
            ps, ts, _ = aggregate_by_group(probs, test_f[1], studies)
            m.update({f"study_{k}": v for k, v in metric(ps, ts).items()})
            m["train_minutes"] = seconds / 60
            results.setdefault(name, []).append(m)
            row_seeds.setdefault(name, []).append(seed)
            if name in ("KNN", "Decision tree"):  # deterministic given the data: one seed says it all
                break
    if deep:
        no_mgacr = ("train.mgacr.attention=false", "train.mgacr.feature=false", "train.loss.kind=ce",
                    "train.pretrained=false")
        for name, arch, lr_per_image in TABLE2_DEEP:
            if name in reused:
                results[name], row_seeds[name] = reused[name], reused_seeds[name]
                continue
            extra: tuple[str, ...] = (f"train.arch={arch}",)
            if lr_per_image is not None:
                extra += (f"train.optim.lr={lr_per_image * base.train.optim.batch_size:g}",)
            for seed in seeds:
                cfg = _config(preset, overrides, out_dir / f"seed{seed}" / name.lower(), seed, (*no_mgacr, *extra))
                results.setdefault(name, []).append(run_train(cfg, data))
                row_seeds.setdefault(name, []).append(seed)
    if ablation is not None:
        for name, row in (("ResNet18", TABLE1[0]), ("Deep Pneumonia (full)", TABLE1[-1])):
            results[name], row_seeds[name] = ablation["results"][row.name], list(ablation["seeds"])
    summary = {"preset": preset, "overrides": overrides, "seeds": seeds, "results": results, "row_seeds": row_seeds,
               "data": base.data.path, "deep": deep, "test_images": len(data.test), "test_patients":
               len({data.manifest.records[int(i)].patient_id for i in data.test.indices}), "test_split": test_split,
               "previous": str(previous) if previous is not None else None, "hardware": hardware()}
    (out_dir / "comparison.json").write_text(json.dumps(summary, indent=1, default=float))
    return summary


def _split_fingerprint(data: PreparedData) -> str:
    """A short hash of the test part's image ids: two runs with the same one are scored on the same images."""
    import hashlib

    ids = sorted(data.manifest.records[int(i)].image_id for i in data.test.indices)
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def _reusable_rows(previous: dict[str, Any] | None, base: Config, test_split: str, test_images: int
                   ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[int]]]:
    """The rows of an earlier comparison that may stand in this one (same data and test images), and their seeds."""
    if previous is None:
        return {}, {}
    old_split = previous.get("test_split")  # files written before the fingerprint: the test part's size
    same_split = old_split == test_split if old_split is not None else previous.get("test_images") == test_images
    if previous.get("data") != base.data.path or not same_split:
        raise ConfigError(f"the --previous comparison is not of this data and test part (data {previous.get('data')!r} "
                          f"there, {base.data.path!r} here; test-part fingerprint {previous.get('test_split')} there, "
                          f"{test_split} here)")
    skip = {"ResNet18", "Deep Pneumonia (full)"}  # always taken from the ablation given now
    rows = {k: v for k, v in previous.get("results", {}).items() if k not in skip and v}
    old_seeds = previous.get("row_seeds", {})
    seeds = {k: list(old_seeds.get(k, previous.get("seeds", [])[:len(v)])) for k, v in rows.items()}
    return rows, seeds


MULTILABEL_METHODS = (
    ("Sigmoid baseline (BCE)", ("train.method=deep_pneumonia", "train.mgacr.attention=false",
                                "train.mgacr.feature=false", "train.loss.kind=ce")),
    ("CAN", ("train.method=can",)),
)


def _per_finding_auroc(classes: tuple[str, ...], scored: tuple[str, ...]):  # type: ignore[no-untyped-def]
    """AUROC per finding, and "mean" over the findings ``scored`` (those with positives in the full test part):
    a bootstrap resample where one of them is undefined gives NaN, so every mean is over the same findings."""
    from sklearn.metrics import roc_auc_score

    def fn(p: np.ndarray, t: np.ndarray) -> dict[str, float]:
        out: dict[str, float] = {}
        for k, c in enumerate(classes):
            known = ~np.isnan(t[:, k])
            y = t[known, k]
            out[c] = float(roc_auc_score(y, p[known, k])) if 0 < y.sum() < y.size else float("nan")
        out["mean"] = float(np.mean([out[c] for c in scored])) if scored else float("nan")
        return out

    return fn


def run_multilabel_comparison(preset: str, overrides: list[str], seeds: list[int], out_dir: Path,
                              n_boot: int = 1000) -> dict[str, Any]:
    """CAN against the plain sigmoid classifier on a multi-label data set: per-finding AUROC with patient-bootstrap
    95 % CIs on the held-out patients, one shared Stage I encoder per seed (when ``train.pretrained``)."""
    from deeppneumonia.evaluation.bootstrap import bootstrap_ci
    from deeppneumonia.inference import predict_split
    from deeppneumonia.pipeline import load_model, runtime_for

    out_dir.mkdir(parents=True, exist_ok=True)
    base = load_config(preset, overrides)
    data = prepare_data(base, base.run.progress)
    if data.manifest.task != "multilabel":
        raise ValueError(f"{base.data.path} is not multi-label; this comparison needs several findings per image")
    classes = data.manifest.classes
    targets = data.test.targets.numpy()
    patients = [data.manifest.records[int(i)].patient_id for i in data.test.indices]
    has_both = [0 < np.nansum(targets[:, k] == 1) < (~np.isnan(targets[:, k])).sum() for k in range(len(classes))]
    fn = _per_finding_auroc(classes, tuple(c for c, ok in zip(classes, has_both, strict=True) if ok))
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in MULTILABEL_METHODS}
    for seed in seeds:
        seed_dir = out_dir / f"seed{seed}"
        pre_extra: tuple[str, ...] = ()
        if base.train.pretrained and not base.train.encoder:
            run_pretrain(_config(preset, overrides, seed_dir, seed, ()), data)
            pre_extra = (f"train.encoder={seed_dir / 'pretrain' / 'encoder.safetensors'}",)
        for name, extra in MULTILABEL_METHODS:
            run = seed_dir / name.split()[0].lower()
            cfg = _config(preset, overrides, run, seed, (*extra, *pre_extra))
            metrics = run_train(cfg, data)
            rt = runtime_for(cfg)
            model, _, _ = load_model(run / "train" / "model.safetensors", rt)
            probs = predict_split(model, data.test, rt, cfg.data.mean, cfg.data.std, multilabel=True)
            auroc = fn(probs, targets)
            ci = bootstrap_ci(probs, targets, patients, fn, n_boot=n_boot, seed=seed)
            results[name].append({"auroc": auroc, "ci": {k: list(v) for k, v in ci.items()}, "metrics": metrics})
            log.info("seed %d, %s: mean AUROC %.3f", seed, name, auroc["mean"])
    known = ~np.isnan(targets)
    summary = {"preset": preset, "overrides": overrides, "seeds": seeds, "results": results, "data": base.data.path,
               "classes": list(classes), "test_images": len(data.test), "test_patients": len(set(patients)),
               "test_positives": {c: int(np.nansum(targets[:, k] == 1)) for k, c in enumerate(classes)},
               "test_known": {c: int(known[:, k].sum()) for k, c in enumerate(classes)},
               "train_images": len(data.train), "hardware": hardware()}
    (out_dir / "multilabel.json").write_text(json.dumps(summary, indent=1, default=float))
    return summary


def multilabel_markdown(summary: dict[str, Any], command: str) -> str:
    names = list(summary["results"])

    def cell(runs: list[dict[str, Any]], key: str) -> str:
        vals = [r["auroc"][key] for r in runs if not np.isnan(r["auroc"][key])]
        if not vals:
            return "–"
        lo, hi = runs[0]["ci"].get(key, [None, None])
        ci = f" [{lo:.2f}, {hi:.2f}]" if lo is not None and not np.isnan(lo) else ""
        sd = f" ± {np.std(vals, ddof=1):.3f}" if len(vals) > 1 else ""
        return f"{np.mean(vals):.3f}{sd}{ci}"

    lines = [f"Data `{summary['data']}`: {summary['train_images']} training images; test part {summary['test_images']} "
             f"images of {summary['test_patients']} held-out patients. AUROC per finding (mean ± sd over seeds "
             f"{summary['seeds']}) with the 95 % patient-bootstrap interval of seed {summary['seeds'][0]}; "
             f"'–' where the test part has no positive. Hardware: {summary['hardware']['device']}, torch "
             f"{summary['hardware']['torch']}.", "", f"Command: `{command}`", "",
             "| finding | test positives | " + " | ".join(names) + " |", "|---|---:|" + "---|" * len(names)]
    for c in summary["classes"]:
        lines.append(f"| {c} | {summary['test_positives'][c]} | "
                     + " | ".join(cell(summary["results"][n], c) for n in names) + " |")
    lines.append("| **mean (findings with positives)** | | " + " | ".join(cell(summary["results"][n], "mean")
                                                                       for n in names) + " |")
    return "\n".join(lines) + "\n"
