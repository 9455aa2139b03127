"""The paper's Table II: classical models, VGG16-BN and ResNet50 beside ResNet18 and the full method, same split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deeppneumonia.config import Config, load_config
from deeppneumonia.errors import ConfigError
from deeppneumonia.studies.ablation import TABLE1
from deeppneumonia.studies.common import hardware, mean_sd, split_fingerprint, study_config
from deeppneumonia.training.pipeline import prepare_data, run_train

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
    from deeppneumonia.evaluation.metrics import image_and_study_metrics
    from deeppneumonia.studies.baselines import CLASSICAL, fit_classical, split_features

    out_dir.mkdir(parents=True, exist_ok=True)
    base = load_config(preset, overrides)
    data = prepare_data(base, base.run.progress)
    train_f, test_f = split_features(data.train), split_features(data.test)
    studies = [data.manifest.records[int(i)].study_id for i in data.test.indices]
    test_split = split_fingerprint(data)
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
            m = image_and_study_metrics(probs, test_f[1], studies)
            m.pop("studies", None)
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
                cfg = study_config(preset, overrides, out_dir / f"seed{seed}" / name.lower(), seed, (*no_mgacr, *extra))
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


def comparison_markdown(summary: dict[str, Any], command: str) -> str:
    """The comparison table in Markdown: mean ± sd per method over its seeds, with data, hardware and ``command``."""
    cols = ("accuracy", "macro_f1", "study_map")
    row_seeds = summary.get("row_seeds", {})
    lines = [f"Data `{summary['data']}`; test part: {summary['test_images']} images of {summary['test_patients']} "
             f"held-out patients (the same as Table I). Mean ± sd over the seeds in the last column (its count where "
             f"the seeds were not recorded); KNN and the decision tree are deterministic: one run. Hardware: "
             f"{summary['hardware']['device']}.", "", f"Command: `{command}`", "",
             "| method | " + " | ".join(cols) + " | training min | seeds |", "|---|" + "---|" * (len(cols) + 2)]
    for name, runs in summary["results"].items():
        cells = [mean_sd([r.get(c) for r in runs]) for c in cols] + [mean_sd([r.get("train_minutes") for r in runs])]
        seeds = row_seeds.get(name)
        cells.append(",".join(map(str, seeds)) if seeds else str(len(runs)))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
