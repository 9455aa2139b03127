"""Cross-Attention Networks against the plain sigmoid classifier: per-finding AUROC with patient-bootstrap CIs."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from deeppneumonia.config import load_config
from deeppneumonia.studies.common import hardware, study_config
from deeppneumonia.training.pipeline import prepare_data, run_pretrain, run_train

log = logging.getLogger(__name__)

MULTILABEL_METHODS = (
    ("Sigmoid baseline (BCE)", ("train.method=deep_pneumonia", "train.mgacr.attention=false",
                                "train.mgacr.feature=false", "train.loss.kind=ce")),
    ("CAN", ("train.method=can",)),
)


def _per_finding_auroc(classes: tuple[str, ...],
                       scored: tuple[str, ...]) -> Callable[[np.ndarray, np.ndarray], dict[str, float]]:
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
    from deeppneumonia.inference.split import predict_split
    from deeppneumonia.training.pipeline import load_model, runtime_for
    from deeppneumonia.transforms.preprocessing import Preprocessing

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
            run_pretrain(study_config(preset, overrides, seed_dir, seed, ()), data)
            pre_extra = (f"train.encoder={seed_dir / 'pretrain' / 'encoder.safetensors'}",)
        for name, extra in MULTILABEL_METHODS:
            run = seed_dir / name.split()[0].lower()
            cfg = study_config(preset, overrides, run, seed, (*extra, *pre_extra))
            metrics = run_train(cfg, data)
            rt = runtime_for(cfg)
            model, _, _ = load_model(run / "train" / "model.safetensors", rt)
            probs = predict_split(model, data.test, rt, Preprocessing.from_config(cfg.data), multilabel=True)
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
    """The comparison table in Markdown: AUROC per finding and method, mean ± sd over seeds with the first seed's CI."""
    names = list(summary["results"])

    def cell(runs: list[dict[str, Any]], key: str) -> str:
        """``mean ± sd [lo, hi]`` of ``key`` over the runs (``–`` when no run defines it)."""
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
