"""Judge a Stage I encoder alone: kNN and linear-probe accuracy of its pooled features on a labelled split.

``deeppneumonia probe --encoder RUN/pretrain/encoder.safetensors --data PATH`` embeds the run's train and
test patients (the split.json of the encoder's run, or a fresh patient split) and reports the weighted kNN
accuracy (Wu et al. 2018, k = 20, T = 0.07) and a multinomial logistic-regression probe (scikit-learn,
standardised features) fitted on train, scored on test; and, for reference, the same for a randomly
initialised encoder, so one sees what pre-training added.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor

from deeppneumonia.data.batches import CachedSplit
from deeppneumonia.data.cache import build_cache
from deeppneumonia.data.sources import load_source
from deeppneumonia.data.splits import patient_split
from deeppneumonia.errors import CheckpointError
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


def knn_accuracy(train_feats: Tensor, train_labels: Tensor, val_feats: Tensor, val_labels: Tensor,
                 k: int = 20, temperature: float = 0.07) -> float:
    """Weighted kNN on cosine similarity (Wu et al. 2018): votes exp(sim / T) of the k nearest."""
    if len(train_feats) == 0 or len(val_feats) == 0:
        return float("nan")
    c = int(max(train_labels.max(), val_labels.max())) + 1
    sim = val_feats @ train_feats.T
    top, idx = sim.topk(min(k, len(train_feats)), dim=1)
    votes = torch.zeros(len(val_feats), c).scatter_add_(1, train_labels[idx], torch.exp(top / temperature))
    return float((votes.argmax(1) == val_labels).float().mean())


def probe_scores(train_f: Tensor, train_y: Tensor, test_f: Tensor, test_y: Tensor, k: int = 20) -> dict[str, float]:
    lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    lr.fit(train_f.numpy(), train_y.numpy())
    pred = lr.predict(test_f.numpy())
    return {"knn_accuracy": knn_accuracy(train_f, train_y, test_f, test_y, k),
            "linear_accuracy": float((pred == test_y.numpy()).mean()),
            "linear_balanced_accuracy": float(balanced_accuracy_score(test_y.numpy(), pred))}


def probe_encoder(encoder_path: str | Path, data: str | Path, source: str = "auto",
                  cache_dir: str | Path = "~/.cache/deeppneumonia", device: str = "auto", seed: int = 0) -> dict[str, Any]:
    state, meta = load_weights(encoder_path)
    if meta.get("kind") != "encoder":
        raise CheckpointError(f"{encoder_path}: holds a {meta.get('kind')!r}, not a Stage I encoder")
    rt = resolve_runtime(device, "fp32", False)
    manifest = load_source(data, source)
    split_file = Path(encoder_path).resolve().parent.parent / "split.json"
    ids = [r.image_id for r in manifest.records]
    if split_file.is_file() and set(json.loads(split_file.read_text())["train"]) <= set(ids):
        parts = json.loads(split_file.read_text())
        where = {i: k for k, v in enumerate(ids) for i in [v]}
        train_idx = np.asarray([where[i] for i in parts["train"]])
        test_idx = np.asarray([where[i] for i in parts["test"] or parts["val"]])
    else:
        sp = patient_split(manifest, 0.0, 0.3, seed)
        train_idx, test_idx = sp.train, sp.test
    pre = Preprocessing(int(meta["size"]), str(meta["resize"]), float(meta["mean"]), float(meta["std"]))
    cache = build_cache(manifest, pre.size, cache_dir, pre.resize, progress=False)
    train, test = CachedSplit(cache, np.sort(train_idx)), CachedSplit(cache, np.sort(test_idx))
    ty, vy = train.targets.argmax(1), test.targets.argmax(1)
    out: dict[str, Any] = {"train_images": len(train), "test_images": len(test)}
    for name, load in (("pretrained", True), ("random_init", False)):
        torch.manual_seed(seed)
        model = build_classifier(1, meta["arch"])
        if load:
            load_encoder(model, state)
        model.to(rt.device)
        f_tr = embed(model, train, rt, pre)
        f_te = embed(model, test, rt, pre)
        out[name] = probe_scores(f_tr, ty, f_te, vy)
    return out
