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
   class-balanced focal loss): Grad-CAM at ``layer4``. It is the only row that sees boxes in training.

Rows 1 and 4 can be loaded from existing run folders (``baseline`` / ``guided``: a ``model.safetensors``
whose run's ``split.json`` must hold the same test images) instead of being trained again.
Scores (``evaluation.localization``): T(IoU) accuracy at 0.1 ... 0.7 (heatmap >= 0.5 of its max, connected
components as boxes) and the pointing game, on every boxed test image, for the labelled class, at the
working resolution (``data.size``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deeppneumonia.config import Config, load_config
from deeppneumonia.errors import DataError
from deeppneumonia.evaluation.iam_maps import iam_heatmaps, load_round_networks
from deeppneumonia.evaluation.localization import IOU_THRESHOLDS, localization_scores, summarize_localization
from deeppneumonia.evaluation.metrics import scalar_metrics
from deeppneumonia.inference.explain import gradcam
from deeppneumonia.inference.predictor import Predictor
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
    return gradcam(pred.model, x, cls, "layer4")


def score_heatmaps(pred: Predictor, data: PreparedData, heat: HeatFn, batch_size: int = 32) -> dict[str, Any]:
    """Localization scores of ``heat`` on every boxed test image (class = the labelled one), summarised."""
    cache, idx = data.cache, data.test.indices
    boxed = [int(i) for i in idx if cache.boxes(int(i))]
    scores, labels = [], []
    for start in range(0, len(boxed), batch_size):
        ids = boxed[start:start + batch_size]
        x = pred.preprocess_uint8(torch.from_numpy(np.stack([cache.images[i] for i in ids]))[:, None])
        cls = [int(np.nanargmax(data.manifest.records[i].target)) for i in ids]
        for i, c, h in zip(ids, cls, heat(pred, x, cls), strict=True):
            scores.append(localization_scores(h, [(b.x, b.y, b.w, b.h) for b in cache.boxes(i)]))
            labels.append(pred.classes[c])
    out = summarize_localization(scores, labels)
    out["per_image"] = {k: [s[k] for s in scores] for k in PAIRED_KEYS}  # same image order for every row
    return out


PAIRED_KEYS = ("tiou@0.1", "tiou@0.2", "tiou@0.3", "tiou@0.5", "pointing")


def paired_difference(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """Mean of a - b over the same images and its 95 % CI (normal approximation of the paired differences)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def classification_on_test(pred: Predictor, data: PreparedData) -> dict[str, float]:
    probs = []
    for batch in data.test.iterate(64):
        probs.append(pred.probabilities(pred.preprocess_uint8(batch.images)))
    return scalar_metrics(pred.multilabel)(np.concatenate(probs), data.test.targets.numpy())


def run_localization(preset: str, overrides: list[str], out_dir: Path, baseline: Path | None = None,
                     guided: Path | None = None) -> dict[str, Any]:
    """Train (or load) the four models, score their heatmaps, write ``localization.json``; returns the summary."""
    out_dir.mkdir(parents=True, exist_ok=True)
    base = load_config(preset, [*overrides, f"run.out_dir={out_dir}"])
    data = prepare_data(base, base.run.progress)
    if not any(data.cache.boxes(int(i)) for i in data.test.indices):
        raise DataError(f"{base.data.path}: no boxed test images, nothing to localize")

    def cfg(name: str, extra: tuple[str, ...]) -> Config:
        return load_config(preset, [*overrides, f"run.out_dir={out_dir / name}", *extra])

    minutes: dict[str, float] = {}

    def train(name: str, extra: tuple[str, ...], pretrain: bool = False) -> Path:
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
    models["iam"] = train("iam", _iam_overrides(base, False, models["resnet18"].resolve()))
    models["iam_msa"] = train("iam_msa", _iam_overrides(base, True, models["resnet18"].resolve()))
    if guided is not None:
        _check_split(guided, data)
        models["deep_pneumonia"] = guided
    else:
        full = TABLE1[-1]
        enc = out_dir / "deep_pneumonia" / "pretrain" / "encoder.safetensors"
        models["deep_pneumonia"] = train("deep_pneumonia", (*full.overrides, "train.pretrained=true",
                                                            f"train.encoder={enc}"), pretrain=True)

    how = base.train.iam.aggregate
    rows: list[dict[str, Any]] = []
    pred0 = Predictor.from_checkpoint(models["resnet18"], base.run.device)
    rows.append({"model": "Centre prior (no model)", "maps": "Gaussian", "checkpoint": None, "arch": None,
                 "iam_rounds": 0, "localization": score_heatmaps(pred0, data, centre_prior), "test": {},
                 "train_minutes": None, "score_seconds": None})
    for key, label, maps in (("resnet18", "ResNet18", "Grad-CAM"), ("iam", "IAM (no MSA)", "round-0 CAM"),
                             ("iam", "IAM (no MSA)", "IAM"), ("iam_msa", "IAM + MSA", "round-0 CAM"),
                             ("iam_msa", "IAM + MSA", "IAM"), ("deep_pneumonia", "Deep Pneumonia (guided)", "Grad-CAM")):
        pred = Predictor.from_checkpoint(models[key], base.run.device)
        rounds, _ = load_round_networks(models[key], pred.rt.device)
        if maps == "Grad-CAM":
            fn: HeatFn = _gradcam
        elif maps == "round-0 CAM":
            fn = _cam_of(rounds[:1] or [pred.model], how)
        else:
            fn = _cam_of([*rounds, pred.model], how)
        t0 = time.perf_counter()
        loc = score_heatmaps(pred, data, fn)
        rows.append({"model": label, "maps": maps, "checkpoint": str(models[key]), "arch": pred.meta["arch"],
                     "iam_rounds": len(rounds), "localization": loc, "test": classification_on_test(pred, data),
                     "train_minutes": minutes.get(key), "score_seconds": round(time.perf_counter() - t0, 1)})
        log.info("%s / %s: %s", label, maps, {k: round(v, 3) for k, v in loc["overall"].items()})
    summary = {"preset": preset, "overrides": overrides, "data": base.data.path, "size": base.data.size,
               "test_images": len(data.test), "boxed_test_images": rows[-1]["localization"]["overall"]["n"],
               "iam": base.to_dict()["train"]["iam"], "aggregate": how, "rows": rows, "hardware": hardware()}
    (out_dir / "localization.json").write_text(json.dumps(summary, indent=1, default=float))
    return summary


def centre_prior(pred: Predictor, x: torch.Tensor, cls: list[int]) -> np.ndarray:
    """The same map for every image: a Gaussian at the centre, sigma = a quarter of the side. A reference for
    what the scores give without looking at the image (lesions of SIIM lie in the lungs, left and right of it)."""
    h, w = x.shape[-2:]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    g = np.exp(-(((yy + 0.5 - h / 2) / (h / 4)) ** 2 + ((xx + 0.5 - w / 2) / (w / 4)) ** 2) / 2)
    return np.repeat(g[None], len(cls), axis=0)


def _cam_of(nets: list[torch.nn.Module], how: str) -> HeatFn:
    """Heatmaps: the ``how`` aggregate of the normalised CAMs of ``nets`` (one network: its CAM)."""
    def fn(pred: Predictor, x: torch.Tensor, cls: list[int]) -> np.ndarray:
        return iam_heatmaps(nets, x, cls, "cam", how)
    return fn


def localization_markdown(summary: dict[str, Any], command: str) -> str:
    ts = [f"T(IoU)={t:g}" for t in IOU_THRESHOLDS]
    hw = summary["hardware"]
    lines = [f"Data `{summary['data']}` at {summary['size']} px; {summary['boxed_test_images']} boxed images among the "
             f"{summary['test_images']} held-out test images. Hardware: {hw['device']}, torch {hw['torch']}.", "",
             f"Command: `{command}`", "",
             "| model | heatmap | " + " | ".join(ts) + " | pointing | test acc | test macro-F1 | train min |",
             "|---|---|" + "---|" * (len(ts) + 4)]
    for r in summary["rows"]:
        o = r["localization"]["overall"]
        cells = [f"{o.get(f'tiou@{t:g}', float('nan')):.3f}" for t in IOU_THRESHOLDS]
        cells.append(f"{o.get('pointing', float('nan')):.3f}")
        cells += [f"{r['test']['accuracy']:.3f}" if "accuracy" in r["test"] else "–",
                  f"{r['test']['macro_f1']:.3f}" if "macro_f1" in r["test"] else "–"]
        cells.append("–" if r["train_minutes"] is None else f"{r['train_minutes']:.1f}")
        lines.append(f"| {r['model']} | {r['maps']} | " + " | ".join(cells) + " |")
    pairs = [(a, b) for a in summary["rows"] for b in summary["rows"]
             if a["maps"] == "IAM" and b["maps"] == "round-0 CAM" and a["model"] == b["model"]]
    base = next((r for r in summary["rows"] if r["model"] == "ResNet18"), None)
    if base is not None:
        pairs += [(r, base) for r in summary["rows"] if r["maps"] == "IAM"]
    if pairs:
        lines += ["", "Paired differences on the same images (mean and 95 % CI):", "",
                  "| comparison | " + " | ".join(PAIRED_KEYS) + " |", "|---|" + "---|" * len(PAIRED_KEYS)]
        for a, b in pairs:
            pa, pb = a["localization"].get("per_image", {}), b["localization"].get("per_image", {})
            cells = []
            for k in PAIRED_KEYS:
                if k in pa and k in pb:
                    m, lo, hi = paired_difference(pa[k], pb[k])
                    cells.append(f"{m:+.3f} [{lo:+.3f}, {hi:+.3f}]")
                else:
                    cells.append("–")
            lines.append(f"| {a['model']} {a['maps']} − {b['model']} {b['maps']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
