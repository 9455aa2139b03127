"""Weakly supervised localization study (issue 8): IAM's heatmaps against Grad-CAM/CAM of plain classifiers.

Four models on one patient-grouped split (``data.split_seed``), lesion boxes used only for scoring:

1. **ResNet18** (Table I row 1: cross-entropy, no pre-training, no MGACR): Grad-CAM at ``layer4``.
2. **IAM** without MSA and 3. **IAM + MSA** (``train.method=iam``, cross-entropy, boxes never read), both
   started from model 1 (``train.iam.init``): without MSA, round 0 *is* the baseline network (no warm-up), so
   the comparison is against CAM of the very same classifier; with MSA, the baseline's backbone plus
   ``train.iam.warmup_epochs`` epochs to train the aggregation head. Each is scored twice: the CAM of its
   round-0 network (plain CAM before mining) and the IAM map (aggregate of the maps of rounds 0..K,
   :mod:`deeppneumonia.evaluation.iam_maps`).
4. **Deep Pneumonia** (Table I row 5: Stage I encoder, MGACR guided *by the boxes of the training images*,
   class-balanced focal loss): Grad-CAM at ``layer4``, and MGACR's own map+ of each guided layer when its heads
   were kept (``train.keep_attention_heads=true``, set when the study trains it; a loaded ``guided`` model
   needs ``mgacr_heads.safetensors`` next to it). It is the only model that sees boxes in training.

Rows 1 and 4 can be loaded from existing run folders (``baseline`` / ``guided``: a ``model.safetensors``
whose run's ``split.json`` must hold the same test images) instead of being trained again.
Scores (``evaluation.localization``): T(IoU) accuracy at 0.1 ... 0.7 (heatmap >= 0.5 of its max, connected
components as boxes) and the pointing game (centroid of the largest maximal region), on every boxed test
image for its labelled class (multi-label: once per finding with boxes, against that finding's boxes), at the
working resolution (``data.size``). Every table also holds reference rows computed from the boxes alone: the
**centre prior** (one fixed Gaussian) and the **oracle** of each grid a map in the table has (the box mask
pooled to that grid and upsampled like CAM: the ceiling of a map of that resolution); the ``grid`` column says
which. Paired differences (same items) have 95 % CIs from a bootstrap over patients.

The **box-occlusion test** (``evaluation/occlusion.py``) runs on models 1 and 4: the drop in the true class's
probability when the lesion boxes are filled minus the drop when the same box shapes are filled elsewhere,
paired per image, with ROAD on Grad-CAM as a box-free measure.

:func:`reference_study` computes the reference rows alone (no model), e.g.
``deeppneumonia localize --references-only -c siim-128-cpu --out runs/loc-refs-128``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deeppneumonia.config import Config, load_config
from deeppneumonia.errors import DataError
from deeppneumonia.evaluation.attention_maps import load_mgacr_heads, mgacr_heatmaps
from deeppneumonia.evaluation.iam_maps import iam_heatmaps, load_round_networks
from deeppneumonia.evaluation.localization import (
    IOU_THRESHOLDS,
    Box,
    boxes_by_class,
    localization_scores,
    patient_bootstrap_mean,
    summarize_localization,
)
from deeppneumonia.evaluation.metrics import scalar_metrics
from deeppneumonia.evaluation.occlusion import occlusion_report, paired_model_difference
from deeppneumonia.evaluation.references import centre_prior_map, feature_grid, grid_label, reference_scores
from deeppneumonia.inference.explain import gradcam
from deeppneumonia.inference.predictor import Predictor
from deeppneumonia.runtime.device import resolve_runtime
from deeppneumonia.studies.ablation import TABLE1
from deeppneumonia.studies.common import hardware
from deeppneumonia.training.loop import logged_seconds
from deeppneumonia.training.pipeline import PreparedData, prepare_data, run_pretrain, run_train

log = logging.getLogger(__name__)

_PLAIN = ("train.method=deep_pneumonia", "train.mgacr.attention=false", "train.mgacr.feature=false",
          "train.loss.kind=ce", "train.pretrained=false")
_IAM = ("train.method=iam", "train.mgacr.attention=false", "train.mgacr.feature=false", "train.loss.kind=ce",
        "train.pretrained=false")
HeatFn = Callable[[Predictor, torch.Tensor, list[int]], np.ndarray]


def _iam_overrides(base: Config, msa: bool, init: Path) -> tuple[str, ...]:
    """IAM from the baseline: without MSA it starts from the whole baseline network (no warm-up: round 0 *is*
    the baseline); with MSA from its backbone, with ``train.iam.warmup_epochs`` to train the MSA head."""
    ic = base.train.iam
    warm = ic.warmup_epochs if msa else 0
    return (*_IAM, f"train.iam.msa={str(msa).lower()}", f"train.iam.init={init}", f"train.iam.warmup_epochs={warm}",
            f"train.optim.epochs={warm + ic.iterations * ic.epochs_per_iteration}")


def _training_seconds(run_dir: Path) -> float:
    """Training time of a run folder's stages (sum of the epochs' train_seconds in metrics.jsonl)."""
    return sum(logged_seconds(run_dir / stage) or 0.0 for stage in ("pretrain", "train"))


def _check_split(model: Path, data: PreparedData) -> None:
    """Raise DataError unless the run of ``model`` has the same test images as ``data``.

    The run's ``split.json`` is looked up beside its run folder (or one level up, the ablation layout); its absence
    is a DataError too.
    """
    split_file = model.resolve().parent.parent / "split.json"
    if not split_file.is_file():
        split_file = model.resolve().parent.parent.parent / "split.json"  # ablation layout: seedN/split.json
    if not split_file.is_file():
        raise DataError(f"{model}: no split.json next to its run folder; cannot check it used the same split")
    theirs = set(json.loads(split_file.read_text())["test"])
    ours = {data.manifest.records[int(i)].image_id for i in data.test.indices}
    if theirs != ours:
        raise DataError(f"{model} was trained on another split ({len(theirs ^ ours)} test images differ)")


def _gradcam(pred: Predictor, x: torch.Tensor, cls: list[int]) -> np.ndarray:
    """Grad-CAM heatmaps of ``layer4`` for the classes ``cls``: the :data:`HeatFn` of a plain classifier."""
    return gradcam(pred.model, x, cls, "layer4")


Item = tuple[int, int, list[Box], str]  # (record index, class index, that class's boxes, patient id)


def boxed_items(data: PreparedData, classes: Sequence[str], multilabel: bool) -> list[Item]:
    """The scored items of the boxed test images, in test order: one per image (multi-class: the labelled
    class), or one per finding with boxes (multi-label: that finding's boxes; :func:`boxes_by_class`)."""
    out: list[Item] = []
    for i in data.test.indices:
        rec = data.manifest.records[int(i)]
        for c, boxes in boxes_by_class(data.cache.boxes(int(i)), rec.target, classes, multilabel):
            out.append((int(i), c, boxes, str(rec.patient_id)))
    return out


def score_heatmaps(pred: Predictor, data: PreparedData, heat: HeatFn, batch_size: int = 32) -> dict[str, Any]:
    """Localization scores of ``heat`` on every scored item (:func:`boxed_items`), summarised; ``per_image``
    holds the per-item scores of :data:`PAIRED_KEYS` and the patient ids (same order for every row)."""
    items = boxed_items(data, pred.classes, pred.multilabel)
    scores, labels = [], []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        x = pred.preprocess_uint8(torch.from_numpy(np.stack([data.cache.images[i] for i, *_ in chunk]))[:, None])
        cls = [c for _, c, _, _ in chunk]
        for (_, c, boxes, _), h in zip(chunk, heat(pred, x, cls), strict=True):
            scores.append(localization_scores(h, boxes))
            labels.append(pred.classes[c])
    out = summarize_localization(scores, labels)
    out["per_image"] = {k: [s[k] for s in scores] for k in PAIRED_KEYS}
    out["per_image"]["patient"] = [p for *_, p in items]
    return out


PAIRED_KEYS = ("tiou@0.1", "tiou@0.2", "tiou@0.3", "tiou@0.5", "pointing")


def paired_difference(a: list[float], b: list[float], patients: list[str] | None = None,
                      n_boot: int = 2000) -> tuple[float, float, float]:
    """Mean of a - b over the same items and its 95 % CI: a bootstrap over patients when ``patients`` is given
    (:func:`patient_bootstrap_mean`), else the normal approximation of the paired differences."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if patients is not None:
        r = patient_bootstrap_mean(d.tolist(), patients, n_boot)
        return r["mean"], r["lo"], r["hi"]
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def row_grids(cfg: Config) -> dict[str, tuple[int, int]]:
    """The grid of each kind of map at ``data.size``: Grad-CAM / CAM at layer4, the MSA map (its finest
    aggregated layer), MGACR map+ of each guided layer (``"map+ layerL"``)."""
    size = cfg.data.size
    out = {"layer4": feature_grid(size, 4), "msa": feature_grid(size, min(cfg.train.iam.msa_layers))}
    for layer in cfg.train.mgacr.layers:
        out[f"map+ layer{layer}"] = feature_grid(size, layer)
    return out


def reference_rows(data: PreparedData, classes: Sequence[str], multilabel: bool,
                   grids: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """Centre-prior and oracle rows on the scored items (no model): what a fixed guess gets, and the ceiling
    of each grid (:func:`deeppneumonia.evaluation.references.reference_scores`)."""
    items = boxed_items(data, classes, multilabel)
    size = data.cache.size
    refs = reference_scores([b for _, _, b, _ in items], (size, size), grids)
    rows = []
    for name, summ in refs.items():
        per = {k: summ["per_image"][k] for k in PAIRED_KEYS}
        per["patient"] = [p for *_, p in items]
        summ["per_image"] = per
        model = "Centre prior (no model)" if name == "centre prior" else f"Oracle {summ['grid']} (boxes)"
        rows.append({"model": model, "maps": "Gaussian" if name == "centre prior" else "pooled box mask",
                     "grid": summ["grid"], "reference": True, "checkpoint": None, "arch": None, "iam_rounds": 0,
                     "localization": summ, "test": {}, "train_minutes": None, "score_seconds": None})
    return rows


def classification_on_test(pred: Predictor, data: PreparedData) -> dict[str, float]:
    """Scalar classification metrics (:func:`scalar_metrics`) of ``pred`` on the test part."""
    probs = []
    for batch in data.test.iterate(64):
        probs.append(pred.probabilities(pred.preprocess_uint8(batch.images)))
    return scalar_metrics(pred.multilabel)(np.concatenate(probs), data.test.targets.numpy())


def run_localization(preset: str, overrides: list[str], out_dir: Path, baseline: Path | None = None,
                     guided: Path | None = None, occlusion_fill: str = "mean", road_images: int = 64,
                     iam: bool = True) -> dict[str, Any]:
    """Train (or load) the four models, score their heatmaps against the centre-prior and oracle rows, run the
    occlusion test on ResNet18 and Deep Pneumonia (``occlusion_fill``: mean, blur or none), write
    ``localization.json``; returns the summary. ``iam=False`` leaves out models 2 and 3 (the IAM rows): with
    ``baseline`` and ``guided`` given, nothing is trained."""
    out_dir.mkdir(parents=True, exist_ok=True)
    base = load_config(preset, [*overrides, f"run.out_dir={out_dir}"])
    data = prepare_data(base, base.run.progress)
    if not any(data.cache.boxes(int(i)) for i in data.test.indices):
        raise DataError(f"{base.data.path}: no boxed test images, nothing to localize")

    def cfg(name: str, extra: tuple[str, ...]) -> Config:
        """The config of the row ``name``: its own run folder under ``out_dir`` plus ``extra`` overrides."""
        return load_config(preset, [*overrides, f"run.out_dir={out_dir / name}", *extra])

    minutes: dict[str, float] = {}

    def train(name: str, extra: tuple[str, ...], pretrain: bool = False) -> Path:
        """Train the row ``name`` (Stage I first with ``pretrain``), record its minutes; returns its model path."""
        c = cfg(name, extra)
        if pretrain:
            run_pretrain(c, data)
        run_train(c, data)
        minutes[name] = round(_training_seconds(out_dir / name) / 60, 2)  # from the logs: right on a rerun too
        return out_dir / name / "train" / "model.safetensors"

    models: dict[str, Path] = {}
    if baseline is not None:
        _check_split(baseline, data)
        models["resnet18"] = baseline
    else:
        models["resnet18"] = train("resnet18", _PLAIN)
    if iam:
        models["iam"] = train("iam", _iam_overrides(base, False, models["resnet18"].resolve()))
        models["iam_msa"] = train("iam_msa", _iam_overrides(base, True, models["resnet18"].resolve()))
    if guided is not None:
        _check_split(guided, data)
        models["deep_pneumonia"] = guided
    else:
        full = TABLE1[-1]
        enc = out_dir / "deep_pneumonia" / "pretrain" / "encoder.safetensors"
        models["deep_pneumonia"] = train("deep_pneumonia", (*full.overrides, "train.pretrained=true",
                                                            f"train.encoder={enc}", "train.keep_attention_heads=true"),
                                         pretrain=True)

    how = base.train.iam.aggregate
    grids = row_grids(base)
    learned: list[tuple[str, str, str, str]] = [  # (model key, row label, maps, grid key)
        ("resnet18", "ResNet18", "Grad-CAM", "layer4"), ("iam", "IAM (no MSA)", "round-0 CAM", "layer4"),
        ("iam", "IAM (no MSA)", "IAM", "layer4"), ("iam_msa", "IAM + MSA", "round-0 CAM", "msa"),
        ("iam_msa", "IAM + MSA", "IAM", "msa"), ("deep_pneumonia", "Deep Pneumonia (guided)", "Grad-CAM", "layer4")]
    learned = [row for row in learned if row[0] in models]
    heads = load_mgacr_heads(models["deep_pneumonia"], resolve_runtime(base.run.device, "fp32", False).device)
    if heads is not None:  # MGACR's own maps, from the heads kept for analysis
        learned += [("deep_pneumonia", "Deep Pneumonia (guided)", f"map+ layer{layer}", f"map+ layer{layer}")
                    for layer in heads[1]["layers"]]
        grids.update({f"map+ layer{layer}": feature_grid(base.data.size, layer) for layer in heads[1]["layers"]})
    else:
        log.warning("%s has no %s next to it: MGACR's own maps are not scored (train with "
                    "train.keep_attention_heads=true)", models["deep_pneumonia"], "mgacr_heads.safetensors")
    pred0 = Predictor.from_checkpoint(models["resnet18"], base.run.device)
    used = sorted({grids[g] for *_, g in learned}, reverse=True)
    rows: list[dict[str, Any]] = reference_rows(data, pred0.classes, pred0.multilabel, used)
    preds: dict[str, Predictor] = {}
    for key, label, maps, grid_key in learned:
        pred = preds.setdefault(key, Predictor.from_checkpoint(models[key], base.run.device))
        rounds, _ = load_round_networks(models[key], pred.rt.device)
        if maps == "Grad-CAM":
            fn: HeatFn = _gradcam
        elif maps == "round-0 CAM":
            fn = _cam_of(rounds[:1] or [pred.model], how)
        elif maps == "IAM":
            fn = _cam_of([*rounds, pred.model], how)
        else:
            assert heads is not None
            fn = _mapplus(heads[0], int(maps.removeprefix("map+ layer")))
        t0 = time.perf_counter()
        loc = score_heatmaps(pred, data, fn)
        rows.append({"model": label, "maps": maps, "grid": grid_label(grids[grid_key]), "checkpoint": str(models[key]),
                     "arch": pred.meta["arch"], "iam_rounds": len(rounds), "localization": loc,
                     "test": classification_on_test(pred, data), "train_minutes": minutes.get(key),
                     "score_seconds": round(time.perf_counter() - t0, 1)})
        log.info("%s / %s: %s", label, maps, {k: round(v, 3) for k, v in loc["overall"].items()})
    occlusion: dict[str, Any] = {}
    if occlusion_fill != "none":
        for key, label in (("resnet18", "ResNet18"), ("deep_pneumonia", "Deep Pneumonia (guided)")):
            t0 = time.perf_counter()
            occlusion[label] = occlusion_report(preds[key], data.cache, data.test.indices, fill=occlusion_fill,
                                                seed=base.run.seed, road_images=road_images)
            occlusion[label]["seconds"] = round(time.perf_counter() - t0, 1)
        occlusion["Deep Pneumonia (guided) − ResNet18"] = paired_model_difference(
            occlusion["Deep Pneumonia (guided)"], occlusion["ResNet18"])
    summary = {"preset": preset, "overrides": overrides, "data": base.data.path, "size": base.data.size,
               "test_images": len(data.test), "boxed_test_images": sum(1 for i in data.test.indices
                                                                       if data.cache.boxes(int(i))),
               "scored_items": rows[0]["localization"]["overall"]["n"], "iam": base.to_dict()["train"]["iam"],
               "aggregate": how, "rows": rows, "occlusion": occlusion, "hardware": hardware()}
    (out_dir / "localization.json").write_text(json.dumps(summary, indent=1, default=float))
    return summary


def reference_study(preset: str, overrides: list[str], out_dir: Path) -> dict[str, Any]:
    """The centre-prior and oracle rows alone (no model is trained or read): the ceiling of each grid the full
    study uses at ``data.size`` (:func:`row_grids`), on the same split and items; writes ``references.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    base = load_config(preset, [*overrides, f"run.out_dir={out_dir}"])
    data = prepare_data(base, base.run.progress)
    if not any(data.cache.boxes(int(i)) for i in data.test.indices):
        raise DataError(f"{base.data.path}: no boxed test images, nothing to localize")
    grids = row_grids(base)
    multilabel = data.manifest.task == "multilabel"
    rows = reference_rows(data, tuple(data.manifest.classes), multilabel, sorted(set(grids.values()), reverse=True))
    summary = {"preset": preset, "overrides": overrides, "data": base.data.path, "size": base.data.size,
               "test_images": len(data.test), "grids": {k: grid_label(v) for k, v in grids.items()},
               "boxed_test_images": sum(1 for i in data.test.indices if data.cache.boxes(int(i))),
               "scored_items": rows[0]["localization"]["overall"]["n"], "rows": rows, "occlusion": {},
               "hardware": hardware()}
    (out_dir / "references.json").write_text(json.dumps(summary, indent=1, default=float))
    return summary


def _mapplus(heads: torch.nn.Module, layer: int) -> HeatFn:
    """A :data:`HeatFn` giving MGACR's map+ of ``layer`` (the class is ignored)."""
    def fn(pred: Predictor, x: torch.Tensor, cls: list[int]) -> np.ndarray:
        return mgacr_heatmaps(heads, pred.model, x, layer)
    return fn


def centre_prior(pred: Predictor, x: torch.Tensor, cls: list[int]) -> np.ndarray:
    """The same map for every image (:func:`deeppneumonia.evaluation.localization.centre_prior_map`)."""
    return np.repeat(centre_prior_map((int(x.shape[-2]), int(x.shape[-1])))[None], len(cls), axis=0)


def _cam_of(nets: list[torch.nn.Module], how: str) -> HeatFn:
    """Heatmaps: the ``how`` aggregate of the normalised CAMs of ``nets`` (one network: its CAM)."""
    def fn(pred: Predictor, x: torch.Tensor, cls: list[int]) -> np.ndarray:
        return iam_heatmaps(nets, x, cls, "cam", how)
    return fn


def _cell(v: float | None) -> str:
    """A score to 3 decimals, ``–`` for None or NaN."""
    return "–" if v is None or v != v else f"{v:.3f}"


def localization_markdown(summary: dict[str, Any], command: str) -> str:
    """The study's tables: localization (reference rows first, each row's map grid), paired differences with
    patient-bootstrap CIs, and the occlusion test."""
    ts = [f"T(IoU)={t:g}" for t in IOU_THRESHOLDS]
    hw = summary["hardware"]
    lines = [f"Data `{summary['data']}` at {summary['size']} px; {summary['boxed_test_images']} boxed images among the "
             f"{summary['test_images']} held-out test images ({summary.get('scored_items', '?')} scored items). "
             f"Hardware: {hw['device']}, torch {hw['torch']}.", "",
             f"Command: `{command}`", "",
             "| model | heatmap | grid | " + " | ".join(ts) + " | pointing | test acc | test macro-F1 | train min |",
             "|---|---|---|" + "---|" * (len(ts) + 4)]
    for r in summary["rows"]:
        o = r["localization"]["overall"]
        cells = [_cell(o.get(f"tiou@{t:g}")) for t in IOU_THRESHOLDS]
        cells += [_cell(o.get("pointing")), _cell(r["test"].get("accuracy")), _cell(r["test"].get("macro_f1"))]
        cells.append("–" if r["train_minutes"] is None else f"{r['train_minutes']:.1f}")
        lines.append(f"| {r['model']} | {r['maps']} | {r.get('grid', '–')} | " + " | ".join(cells) + " |")
    rows = summary["rows"]
    learned = [r for r in rows if not r.get("reference")]
    pairs = [(a, b) for a in rows for b in rows
             if a["maps"] == "IAM" and b["maps"] == "round-0 CAM" and a["model"] == b["model"]]
    base = next((r for r in rows if r["model"] == "ResNet18"), None)
    if base is not None:
        pairs += [(r, base) for r in rows if r["maps"] == "IAM"]
    guided_cam = next((r for r in rows if r["model"].startswith("Deep Pneumonia") and r["maps"] == "Grad-CAM"), None)
    if guided_cam is not None:
        pairs += [(r, guided_cam) for r in rows if r["maps"].startswith("map+")]
    prior = next((r for r in rows if r["model"].startswith("Centre prior")), None)
    if prior is not None:
        pairs += [(r, prior) for r in learned]
    if pairs:
        lines += ["", "Paired differences on the same items (mean and 95 % CI, bootstrap over patients):", "",
                  "| comparison | " + " | ".join(PAIRED_KEYS) + " |", "|---|" + "---|" * len(PAIRED_KEYS)]
        for a, b in pairs:
            pa, pb = a["localization"].get("per_image", {}), b["localization"].get("per_image", {})
            pats = pa.get("patient") if pa.get("patient") == pb.get("patient") else None
            cells = []
            for k in PAIRED_KEYS:
                if k in pa and k in pb:
                    m, lo, hi = paired_difference(pa[k], pb[k], pats)
                    cells.append(f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]")
                else:
                    cells.append("–")
            lines.append(f"| {a['model']} {a['maps']} − {b['model']} {b['maps']} | " + " | ".join(cells) + " |")
    occ = summary.get("occlusion") or {}
    if occ:
        lines += ["", "Box occlusion (drop in the true class's probability; 95 % CI over patients) and ROAD:", "",
                  "| model | fill | items | skipped | drop, lesion boxes filled | drop, same boxes elsewhere | "
                  "paired difference | lesion worse | ROAD (Grad-CAM) |", "|---|---|---|---|---|---|---|---|---|"]

        def ci(d: dict[str, float]) -> str:
            return f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]"

        for name, o in occ.items():
            if "difference" not in o or not isinstance(o["difference"], dict):
                continue
            road = o.get("road", {})
            lines.append(f"| {name} | {o['fill']} | {o['n']} | {o['skipped']} | {ci(o['drop_lesion'])} | "
                         f"{ci(o['drop_outside'])} | {ci(o['difference'])} | {o['lesion_worse_share']:.2f} | "
                         f"{ci(road) if road.get('n') else '–'} (n={road.get('n', 0)}) |")
        for name, d in occ.items():
            if "difference" not in d:
                lines += ["", f"{name}, paired difference of the differences: {ci(d)} ({d['n']} items, "
                          f"{d['patients']} patients)."]
    return "\n".join(lines) + "\n"
