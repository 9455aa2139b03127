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
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deeppneumonia.config import load_config
from deeppneumonia.runtime.device import autocast_name
from deeppneumonia.studies.common import hardware, mean_sd, study_config
from deeppneumonia.training.loop import logged_seconds
from deeppneumonia.training.pipeline import PreparedData, prepare_data, run_pretrain, run_train

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

DELTA_COLUMNS = ("study_map", "macro_f1", "auroc_macro")


def _row_record(record_dir: Path | None, seed: int, k: int) -> Path | None:
    return None if record_dir is None else record_dir / f"seed{seed}_row{k}.json"


def run_ablation(preset: str, overrides: list[str], seeds: list[int], out_dir: Path,
                 rows: list[int] | None = None, record_dir: Path | None = None) -> dict[str, Any]:
    """Table I: for each seed, Stage I once (when a pre-trained row runs), then the rows on the same split.

    Args:
        preset, overrides: the config every row starts from.
        seeds: training seeds (initialisation, batch order, augmentation); the split is fixed by ``data.split_seed``.
        out_dir: run folders ``seed<S>/pretrain`` and ``seed<S>/row<K>``; ``ablation.json`` when done.
        rows: the rows (1-based) to run; default all. Rows not listed still enter the table when their result
            exists (in ``record_dir`` or a finished run folder), so a table grows over several invocations.
        record_dir: where each finished row's test metrics are copied as ``seed<S>_row<K>.json`` (small files meant to
            be committed); a row whose record exists is not run again.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if record_dir is not None:
        record_dir.mkdir(parents=True, exist_ok=True)
    wanted = set(rows or range(1, len(TABLE1) + 1))
    base = load_config(preset, overrides)
    data: PreparedData = prepare_data(base, base.run.progress)
    has_boxes = any(r.boxes for r in data.manifest.records)
    results: dict[str, list[dict[str, Any]]] = {row.name: [] for row in TABLE1}
    predictions: dict[tuple[str, int], Path] = {}
    for seed in seeds:
        seed_dir = out_dir / f"seed{seed}"
        encoder = seed_dir / "pretrain" / "encoder.safetensors"
        pre_minutes: float | None = None
        for k, row in enumerate(TABLE1, start=1):
            extra = (*row.overrides, f"train.pretrained={str(row.pretrained).lower()}")
            if row.needs_boxes and not has_boxes:
                if k < len(TABLE1):
                    continue
                extra = (*extra, "train.mgacr.attention=false", "train.mgacr.feature=false")
            record = _row_record(record_dir, seed, k)
            finished = seed_dir / f"row{k}" / "test_metrics.json"
            if record is not None and record.is_file():
                metrics = json.loads(record.read_text())
            elif finished.is_file() and k not in wanted:
                metrics = json.loads(finished.read_text())
            elif k in wanted:
                if row.pretrained:
                    if pre_minutes is None:
                        run_pretrain(study_config(preset, overrides, seed_dir, seed, ()), data)
                        pre_seconds = logged_seconds(seed_dir / "pretrain")
                        pre_minutes = pre_seconds / 60 if pre_seconds is not None else float("nan")
                    extra = (*extra, f"train.encoder={encoder}")
                cfg = study_config(preset, overrides, seed_dir / f"row{k}", seed, extra)
                metrics = run_train(cfg, data)
                metrics["pretrain_minutes"] = pre_minutes if row.pretrained else 0.0
                metrics["seed"] = seed
                metrics["precision"] = autocast_name(cfg.run.device, cfg.run.precision)
                if record is not None:
                    record.write_text(json.dumps(metrics, indent=1))
                    preds = seed_dir / f"row{k}" / "test_predictions.npz"
                    if preds.is_file():
                        shutil.copyfile(preds, record.with_suffix(".npz"))
            else:
                continue
            metrics.setdefault("seed", seed)
            for where in (record.with_suffix(".npz") if record is not None else None,
                          seed_dir / f"row{k}" / "test_predictions.npz"):
                if where is not None and where.is_file():
                    predictions[(row.name, seed)] = where
                    break
            results[row.name].append(metrics)
            log.info("seed %d, %s: %s", seed, row.name, {c: metrics.get(c) for c in COLUMNS})
    summary = {"preset": preset, "overrides": overrides, "seeds": seeds, "results": results,
               "data": base.data.path, "test_images": len(data.test), "test_patients":
               len({data.manifest.records[int(i)].patient_id for i in data.test.indices}),
               "hardware": hardware(), "has_boxes": has_boxes}
    summary["paired"] = paired_differences(results, predictions)
    (out_dir / "ablation.json").write_text(json.dumps(summary, indent=1))
    return summary


def paired_interval(diffs: list[float]) -> tuple[float, float, float] | None:
    """Mean of per-seed paired differences and its 95 % t-interval (None with fewer than 2 seeds).

    Each difference is (row - reference) on the same test studies with the same seed, so test-sampling noise largely
    cancels and the interval's width is the seed-to-seed spread of the difference.
    """
    from scipy.stats import t as student_t

    d = np.asarray(diffs, dtype=float)
    d = d[np.isfinite(d)]
    if d.size < 2:
        return None
    half = float(student_t.ppf(0.975, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def load_predictions(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a run's ``test_predictions.npz`` (probs, targets, image/study/patient ids), no pickle."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def bootstrap_deltas(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]],
                      n_boot: int) -> dict[str, tuple[float, float, float]] | None:
    """Seed-and-patient bootstrap of Δ study_map, Δ macro_f1, Δ auroc_macro of runs ``a`` minus runs ``b`` (paired
    by position: same seed), ``(mean, lo, hi)`` each; None if the runs' test parts differ. With one pair the
    interval carries the test patients' sampling only."""
    from deeppneumonia.evaluation.bootstrap import paired_seed_bootstrap
    from deeppneumonia.evaluation.metrics import aggregate_by_group, scalar_metrics

    ref = a[0]
    if any(not np.array_equal(x["image_id"], ref["image_id"]) for x in (*a, *b)):
        return None
    fn = scalar_metrics(False)
    img = paired_seed_bootstrap([x["probs"] for x in a], [x["probs"] for x in b], ref["targets"],
                                list(ref["patient_id"]), fn, n_boot=n_boot)
    studies = list(ref["study_id"])
    agg = [aggregate_by_group(x["probs"], ref["targets"], studies)[0] for x in (*a, *b)]
    _, ts, sid = aggregate_by_group(ref["probs"], ref["targets"], studies)
    patient_of = dict(zip(studies, ref["patient_id"], strict=True))
    study = paired_seed_bootstrap(agg[:len(a)], agg[len(a):], ts, [patient_of[s] for s in sid], fn, n_boot=n_boot)
    return {"study_map": study["map"], "macro_f1": img["macro_f1"], "auroc_macro": img["auroc_macro"]}


def paired_differences(results: dict[str, list[dict[str, Any]]], predictions: dict[tuple[str, int], Path] | None = None,
                       reference: str | None = None, n_boot: int = 1000) -> dict[str, dict[str, Any]]:
    """Per row: its difference against the reference row (default the first, plain ResNet18), seed by seed.

    With every paired run's test predictions (``predictions[(row, seed)]``, the ``test_predictions.npz`` of
    ``run_train``) the interval is the seed-and-patient bootstrap of :func:`paired_seed_bootstrap` (``"ci":
    "bootstrap over seeds and test patients"``; with one seed it carries the test patients only and says so);
    otherwise the 95 % t-interval over the per-seed differences
    (seed noise only).
    """
    predictions = predictions or {}
    names = list(results)
    ref_name = reference or names[0]
    ref = {r.get("seed"): r for r in results[ref_name]}
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        if name == ref_name:
            continue
        pairs = [(r, ref[r.get("seed")]) for r in results[name] if r.get("seed") in ref]
        seeds = [int(r["seed"]) for r, _ in pairs]
        entry: dict[str, Any] = {"seeds": seeds}
        have = seeds and all((name, s) in predictions and (ref_name, s) in predictions for s in seeds)
        boot = None
        if have:
            boot = bootstrap_deltas([load_predictions(predictions[(name, s)]) for s in seeds],
                                     [load_predictions(predictions[(ref_name, s)]) for s in seeds], n_boot)
        if boot is not None:
            entry.update(boot)
            entry["ci"] = ("bootstrap over seeds and test patients" if len(seeds) >= 2 else
                           "bootstrap over test patients only (one seed: no seed noise)")
        else:
            for c in DELTA_COLUMNS:
                diffs = [float(x[c]) - float(y[c]) for x, y in pairs if x.get(c) is not None and y.get(c) is not None]
                entry[c] = paired_interval(diffs)
            entry["ci"] = "t-interval over per-seed differences"
        out[name] = entry
    return out


def _delta_cell(v: tuple[float, float, float] | list[float] | None) -> str:
    return "–" if v is None else f"{v[0]:+.3f} [{v[1]:+.3f}, {v[2]:+.3f}]"


def ablation_markdown(summary: dict[str, Any], command: str) -> str:
    """Table I as markdown: mean ± sd per row, then each row's paired difference against ResNet18."""
    lines = [f"Data `{summary['data']}`; test part: {summary['test_images']} images of {summary['test_patients']} "
             f"held-out patients. Seeds {summary['seeds']}; mean ± sd over seeds (their number in the last column). "
             f"Hardware: {summary['hardware']['device']}, torch {summary['hardware']['torch']}.", "",
             f"Command: `{command}`", "",
             "| row | " + " | ".join(COLUMNS) + " | Stage II min | Stage I min | seeds |",
             "|---|" + "---|" * (len(COLUMNS) + 3)]
    # summaries written before runs recorded their seed ran every row for every seed, in order
    results = {name: [{"seed": s, **r} for r, s in zip(runs, summary["seeds"], strict=False)]
               for name, runs in summary["results"].items()}
    for name, runs in results.items():
        if not runs:
            continue
        cells = [mean_sd([r.get(c) for r in runs]) for c in COLUMNS]
        cells.append(mean_sd([r.get("train_minutes") for r in runs]))
        cells.append(mean_sd([r.get("pretrain_minutes", 0.0) for r in runs]))
        cells.append(",".join(str(r.get("seed", "?")) for r in runs))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    paired = summary.get("paired") or paired_differences(results)
    if paired:
        first = next(iter(results))
        lines += ["", f"Paired difference against **{first}** (same seed, same test studies): the mean over seeds and a "
                  "95 % interval, either a bootstrap that resamples seeds and test patients together (seed and test "
                  "noise) or, where a run's predictions are missing, a t-interval over the per-seed differences "
                  "(seed noise only); the last column says which.",
                  "", "| row | " + " | ".join(f"Δ {c}" for c in DELTA_COLUMNS) + " | paired seeds | interval |",
                  "|---|" + "---|" * (len(DELTA_COLUMNS) + 2)]
        for name, entry in paired.items():
            if not entry["seeds"]:
                continue
            lines.append(f"| {name} | " + " | ".join(_delta_cell(entry[c]) for c in DELTA_COLUMNS)
                         + f" | {','.join(map(str, entry['seeds']))} | {entry.get('ci', '')} |")
    return "\n".join(lines) + "\n"
