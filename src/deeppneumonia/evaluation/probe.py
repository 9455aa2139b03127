"""Judge Stage I encoders alone: kNN and linear-probe accuracy of their pooled features on a labelled split.

``deeppneumonia probe --encoder RUN/pretrain/encoder.safetensors --data PATH`` embeds the run's train
patients and its validation patients (``--on val``, the default: a probe informs model choices, so it does not
look at the test part unless asked) or test patients (``--on test``), from the split.json of the encoder's run
(without one: a fresh 70/30 patient split), and reports the weighted kNN accuracy (Wu et al. 2018, k = 20,
T = 0.07) and a multinomial logistic-regression probe (scikit-learn, standardised features) fitted on train, its
L2 strength C chosen by 5-fold cross-validation over the training patients (log loss; ``linear_c`` fixes it), each
also as balanced accuracy (the mean recall over classes: on imbalanced data plain accuracy sits near the majority
rate whatever the features); and the same for a randomly initialised encoder, with the paired difference
(pre-trained minus random, same images) and its 95 % patient-bootstrap interval. For one encoder that interval
carries the sampling of the scored patients only, not the randomness of the random initialisation or of the Stage I
run. Given several encoders (``--encoder A B C``: Stage I runs with different seeds on the same split), the i-th is
paired with its own random initialisation (seed i) and the pooled difference is the mean over the encoders with a
bootstrap over encoders and patients together (:func:`~deeppneumonia.evaluation.bootstrap.paired_seed_bootstrap`,
as for Table I's paired rows), so its interval carries both.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import GridSearchCV, GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor

from deeppneumonia.data.batches import CachedSplit
from deeppneumonia.data.cache import build_cache
from deeppneumonia.data.sources import load_source
from deeppneumonia.data.splits import patient_split
from deeppneumonia.errors import CheckpointError, ConfigError, DataError
from deeppneumonia.evaluation.bootstrap import paired_seed_bootstrap
from deeppneumonia.models.checkpoint import load_weights
from deeppneumonia.models.factory import build_classifier, load_encoder
from deeppneumonia.models.resnet import XRayResNet
from deeppneumonia.runtime.device import Runtime, eval_mode, resolve_runtime
from deeppneumonia.transforms.inputs import make_inputs
from deeppneumonia.transforms.preprocessing import Preprocessing


@torch.no_grad()
def embed(model: XRayResNet, split: CachedSplit, rt: Runtime, pre: Preprocessing,
          batch_size: int = 128) -> Tensor:
    """(N, D) L2-normalised pooled encoder features of a split (no augmentation), in the split's order."""
    out = []
    with eval_mode(model):
        for batch in split.iterate(batch_size):
            x, _ = make_inputs(batch, rt, pre, None, None)
            with rt.autocast():
                h = model.forward_head(model.forward_features(x), pre_logits=True)
            out.append(F.normalize(h.float(), dim=1).cpu())
    return torch.cat(out) if out else torch.zeros(0, 1)


def knn_predict(train_feats: Tensor, train_labels: Tensor, val_feats: Tensor, num_classes: int,
                k: int = 20, temperature: float = 0.07) -> Tensor:
    """Weighted kNN on cosine similarity (Wu et al. 2018): the class with most votes exp(sim / T) of the k nearest."""
    sim = val_feats @ train_feats.T
    top, idx = sim.topk(min(k, len(train_feats)), dim=1)
    votes = torch.zeros(len(val_feats), num_classes).scatter_add_(1, train_labels[idx], torch.exp(top / temperature))
    return votes.argmax(1)


def knn_accuracy(train_feats: Tensor, train_labels: Tensor, val_feats: Tensor, val_labels: Tensor,
                 k: int = 20, temperature: float = 0.07) -> float:
    """Accuracy of :func:`knn_predict` on ``val``; NaN when either side is empty."""
    if len(train_feats) == 0 or len(val_feats) == 0:
        return float("nan")
    c = int(max(train_labels.max(), val_labels.max())) + 1
    return float((knn_predict(train_feats, train_labels, val_feats, c, k, temperature) == val_labels).float().mean())


# the linear probe's L2 strengths tried by cross-validation (SimCLR's and CLIP's linear evaluations sweep it too): at
# C = 1 a probe on 512 standardised features of ~3,500 images overfits, and its accuracy can fall below kNN's
LINEAR_CS = (1e-3, 1e-2, 1e-1, 1.0)


def linear_probe(train_f: np.ndarray, train_y: np.ndarray, groups: np.ndarray | None = None,
                 c: float | None = None, folds: int = 5) -> Any:
    """The fitted linear probe: standardised features -> multinomial logistic regression.

    ``c`` fixes the inverse L2 strength; ``None`` chooses it from :data:`LINEAR_CS` by ``folds``-fold
    cross-validation on the training images, grouped by ``groups`` (patients, so no patient is on both sides of a
    fold), scored by log loss; the scaler is refit inside each fold. The scored split plays no part in the choice.
    With fewer than two patients there is nothing to cross-validate, and C = 1 is used.
    """
    groups = np.arange(len(train_y)) if groups is None else np.asarray(groups)
    folds = min(folds, len(np.unique(groups)))
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0 if c is None else c))
    if c is not None or folds < 2:
        return pipe.fit(train_f, train_y)
    search = GridSearchCV(pipe, {"logisticregression__C": list(LINEAR_CS)}, scoring="neg_log_loss",
                          cv=GroupKFold(folds), refit=True)
    return search.fit(train_f, train_y, groups=groups)


def probe_predictions(train_f: Tensor, train_y: Tensor, test_f: Tensor, num_classes: int,
                      k: int = 20, groups: np.ndarray | None = None,
                      linear_c: float | None = None) -> dict[str, np.ndarray]:
    """Per-image predicted classes of the two probes, ``{"knn": (N,), "linear": (N,)}``.

    ``groups`` (the training images' patients) and ``linear_c`` go to :func:`linear_probe`.
    """
    lr = linear_probe(train_f.numpy(), train_y.numpy(), groups, linear_c)
    return {"knn": knn_predict(train_f, train_y, test_f, num_classes, k).numpy(),
            "linear": lr.predict(test_f.numpy())}


def _accuracies(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Accuracy and balanced accuracy from one-hot predictions and targets (the probes' bootstrap metric)."""
    p, t = pred.argmax(1), target.argmax(1)
    return {"accuracy": float((p == t).mean()), "balanced_accuracy": float(balanced_accuracy_score(t, p))}


def _probe_split(encoder_path: str | Path, manifest: Any, on: str, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Train and scored indices: the encoder run's own split.json, else a fresh 70/30 patient split."""
    split_file = Path(encoder_path).resolve().parent.parent / "split.json"
    ids = [r.image_id for r in manifest.records]
    parts = json.loads(split_file.read_text()) if split_file.is_file() else {}
    if parts and set(parts["train"]) <= set(ids):
        where = {v: k for k, v in enumerate(ids)}
        if not parts.get(on):
            raise DataError(f"{split_file}: the run has no {on} images to probe on")
        return (np.asarray([where[i] for i in parts["train"]]), np.asarray([where[i] for i in parts[on]]), on)
    sp = patient_split(manifest, 0.0, 0.3, seed)
    return sp.train, sp.test, "held-out 30 % of patients"


def probe_encoders(encoder_paths: Sequence[str | Path], data: str | Path, source: str = "auto",
                   cache_dir: str | Path = "~/.cache/deeppneumonia", device: str = "auto", seed: int = 0,
                   on: str = "val", n_boot: int = 1000, linear_c: float | None = None) -> dict[str, Any]:
    """Probe Stage I encoders, each against its own random initialisation, on the same images.

    Returns ``{"train_images", "scored_on", "scored_images", "encoders": [{"encoder", "pretrained": {...},
    "random_init": {...}, "difference": {"knn_accuracy": (diff, lo, hi), ...}}, ...], "pooled": {...}}``
    (difference = pre-trained minus random; ``pooled``, the mean over the encoders with a bootstrap over encoders
    and patients, only for two or more encoders). All encoders must share the scored images (one split).
    """
    if on not in ("val", "test"):
        raise ConfigError(f"probe: on must be 'val' or 'test', got {on!r}")
    if n_boot < 1:
        raise ConfigError(f"probe: --n-boot must be >= 1, got {n_boot}")
    if not encoder_paths:
        raise ConfigError("probe: give at least one --encoder")
    rt = resolve_runtime(device, "fp32", False)
    manifest = load_source(data, source)
    out: dict[str, Any] = {"encoders": []}
    onehot: dict[str, list[np.ndarray]] = {}
    scored: tuple[np.ndarray, np.ndarray] | None = None
    target, patients = np.zeros((0, 1)), []
    for i, encoder_path in enumerate(encoder_paths):
        state, meta = load_weights(encoder_path)
        if meta.get("kind") != "encoder":
            raise CheckpointError(f"{encoder_path}: holds a {meta.get('kind')!r}, not a Stage I encoder")
        train_idx, test_idx, where = _probe_split(encoder_path, manifest, on, seed)
        train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
        if scored is None:
            scored = (train_idx, test_idx)
        elif not (np.array_equal(scored[0], train_idx) and np.array_equal(scored[1], test_idx)):
            raise ConfigError(f"probe: {encoder_path} was trained on another split than {encoder_paths[0]}; "
                              "probe encoders of different splits one at a time")
        pre = Preprocessing(int(meta["size"]), str(meta["resize"]), float(meta["mean"]), float(meta["std"]))
        cache = build_cache(manifest, pre.size, cache_dir, pre.resize, progress=False)
        train, test = CachedSplit(cache, train_idx), CachedSplit(cache, test_idx)
        ty, vy = train.targets.argmax(1), test.targets.argmax(1)
        c = int(train.targets.shape[1])
        target = np.eye(c)[vy.numpy()]
        patients = [manifest.records[int(j)].patient_id for j in test.indices]  # the images that decoded, in order
        train_patients = np.asarray([str(manifest.records[int(j)].patient_id) for j in train.indices])
        out.update(train_images=len(train), scored_on=where, scored_images=len(test))
        row: dict[str, Any] = {"encoder": str(encoder_path)}
        for name, load in (("pretrained", True), ("random_init", False)):
            torch.manual_seed(seed + i)
            model = build_classifier(1, meta["arch"])
            if load:
                load_encoder(model, state)
            model.to(rt.device)
            preds = probe_predictions(embed(model, train, rt, pre), ty, embed(model, test, rt, pre), c,
                                      groups=train_patients, linear_c=linear_c)
            row[name] = {}
            for probe, pred in preds.items():
                onehot.setdefault(f"{name}/{probe}", []).append(np.eye(c)[pred])
                row[name].update({f"{probe}_{k}": v for k, v in _accuracies(np.eye(c)[pred], target).items()})
        row["difference"] = _differences({k: v[-1:] for k, v in onehot.items()}, target, patients, n_boot, seed)
        out["encoders"].append(row)
    if len(encoder_paths) > 1:
        out["pooled"] = _differences(onehot, target, patients, n_boot, seed)
    return out


def _differences(onehot: dict[str, list[np.ndarray]], target: np.ndarray, patients: list[Any], n_boot: int,
                 seed: int) -> dict[str, tuple[float, float, float]]:
    """Pre-trained minus random for each probe and metric, bootstrapped over the runs given and the patients."""
    diff: dict[str, tuple[float, float, float]] = {}
    for probe in ("knn", "linear"):
        d = paired_seed_bootstrap(onehot[f"pretrained/{probe}"], onehot[f"random_init/{probe}"], target, patients,
                                  _accuracies, n_boot=n_boot, seed=seed)
        diff.update({f"{probe}_{k}": v for k, v in d.items()})
    return diff


def probe_encoder(encoder_path: str | Path, data: str | Path, source: str = "auto",
                  cache_dir: str | Path = "~/.cache/deeppneumonia", device: str = "auto", seed: int = 0,
                  on: str = "val", n_boot: int = 1000, linear_c: float | None = None) -> dict[str, Any]:
    """Probe one Stage I encoder against a random one on the same images; see :func:`probe_encoders`.

    Returns ``{"train_images", "scored_on", "scored_images", "pretrained": {...}, "random_init": {...},
    "difference": {"knn_accuracy": (diff, lo, hi), ...}}`` (difference = pre-trained minus random).
    """
    res = probe_encoders([encoder_path], data, source, cache_dir, device, seed, on, n_boot, linear_c)
    row = res.pop("encoders")[0]
    return {**res, **{k: row[k] for k in ("pretrained", "random_init", "difference")}}
