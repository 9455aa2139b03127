"""Stage II task: Deep Pneumonia supervised training (paper Sec. IV-C and IV-D).

The (optionally pre-trained) ResNet18 classifies; MGACR heads on the chosen residual layers produce
map+ and map-, pulled to the lesion mask and its inverse (Eqs. 2-4), and the attended features are
regulated contrastively (Eq. 5); the class-balanced focal loss (Eq. 9) with weights from the training
counts replaces cross-entropy. Total loss:

    L = L_cls + weight_attention * (L_att+ + L_att-) + weight_feature * L_feat      (Eq. 6, weighted)

Each Table I technique is a switch: ``train.pretrained``, ``train.mgacr.attention``,
``train.mgacr.feature``, ``train.loss.kind``. Validation also measures, per layer, how close map+ is to
the lesion mask on boxed validation images, and warns when the maps collapse to a constant.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from deeppneumonia.config import Config
from deeppneumonia.data.batches import Batch, CachedSplit
from deeppneumonia.evaluation.metrics import scalar_metrics
from deeppneumonia.inference.split import predict_split
from deeppneumonia.losses import ClassBalancedFocalLoss, MGACRLoss
from deeppneumonia.models.attention import MGACRHeads
from deeppneumonia.models.checkpoint import save_weights
from deeppneumonia.models.factory import build_classifier, load_encoder
from deeppneumonia.models.resnet import XRayResNet
from deeppneumonia.runtime.device import Runtime, eval_mode
from deeppneumonia.transforms.inputs import make_inputs
from deeppneumonia.transforms.preprocessing import Preprocessing

log = logging.getLogger(__name__)


def model_metadata(cfg: Config, classes: tuple[str, ...], task: str, arch: str) -> dict[str, Any]:
    """What travels with the inference weights: classes, preprocessing, config."""
    return {"kind": "classifier", "arch": arch, "in_chans": 1, "classes": list(classes), "task": task,
            "preprocessing": Preprocessing.from_config(cfg.data).to_meta(),
            "thresholds": None, "config": cfg.to_dict()}


class SupervisedTask:
    """Deep Pneumonia's Stage II (``train.method=deep_pneumonia``); the base of the other supervised methods.

    Subclasses change the network through :meth:`build_model` and the loss through :meth:`training_step`.
    """

    name = "train"
    ddp_find_unused = False  # every parameter receives a gradient at every step

    def __init__(self, cfg: Config, train: CachedSplit, val: CachedSplit, rt: Runtime,
                 classes: tuple[str, ...], task: str, encoder: dict[str, Tensor] | None = None) -> None:
        self.cfg, self.tcfg, self.train, self.val, self.rt = cfg, cfg.train, train, val, rt
        self.pre = Preprocessing.from_config(cfg.data)
        self.classes, self.task = classes, task
        self.arch: str = cfg.train.arch
        self.multilabel = task == "multilabel"
        self.model = self.build_model(len(classes))
        if self.tcfg.init_weights:
            from deeppneumonia.models.weights import load_init_weights

            load_init_weights(self.model, self.tcfg.init_weights)
        if encoder is not None:
            load_encoder(self.model, encoder)
        m = self.tcfg.mgacr
        self.heads = MGACRHeads(m.layers, m.kernel_size) if (m.attention or m.feature) else None
        if self.heads is not None and not self.arch.startswith("resnet"):
            raise ValueError(f"MGACR needs a ResNet backbone, not {self.arch}; set train.mgacr.attention/feature=false")
        lc = self.tcfg.loss
        beta, gamma = (lc.beta, lc.gamma) if lc.kind == "cb_focal" else (0.0, 0.0)  # (0, 0) = cross-entropy
        self.counts = train.class_counts()
        self.cls_loss = ClassBalancedFocalLoss(self.counts, beta=beta, gamma=gamma,
                                               mode="sigmoid" if self.multilabel else "softmax").to(rt.device)
        self.mgacr_loss = MGACRLoss()
        self.batch_size = min(self.tcfg.optim.batch_size, len(train))
        self.images_per_batch = self.batch_size
        self.best_metric = self.tcfg.best_metric if not self.multilabel else "auroc_macro"

    def build_model(self, num_classes: int) -> XRayResNet:
        """The network this task trains (``train.arch``); Stage I encoder weights are loaded into it afterwards."""
        return build_classifier(num_classes, self.arch)

    def modules(self) -> dict[str, nn.Module]:
        mods: dict[str, nn.Module] = {"model": self.model}
        if self.heads is not None:
            mods["heads"] = self.heads
        return mods

    def steps_per_epoch(self) -> int:
        return max(1, len(self.train) // self.batch_size)

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        return self.train.iterate(self.batch_size, shuffle=True, seed=self.cfg.run.seed * 7919 + epoch,
                                  drop_last=True, shard=True)

    def _target(self, batch: Batch) -> Tensor:
        t = batch.target.to(self.rt.device)
        return t if self.multilabel else t.argmax(1)

    def training_step(self, batch: Batch, g: torch.Generator) -> dict[str, Tensor]:
        _d, m = self.cfg.data, self.tcfg.mgacr
        x, mask = make_inputs(batch, self.rt, self.pre, self.tcfg.augment, g, with_mask=self.heads is not None)
        if self.heads is None:
            feats, logits = [], self.model(x)
        else:
            feats = self.model.forward_intermediates(x)
            logits = self.model.forward_head(feats[-1])
        losses = {"cls": self.cls_loss(logits.float(), self._target(batch))}
        total = losses["cls"]
        if self.heads is not None and mask is not None:
            f, mp, mn = self.heads(feats)
            parts = self.mgacr_loss(f, mp, mn, mask, batch.has_box.to(self.rt.device), use_attention=m.attention,
                                    use_feature=m.feature, no_box=m.no_box)
            losses.update(parts)
            total = total + m.weight_attention * (parts["att_pos"] + parts["att_neg"]) \
                + m.weight_feature * parts["feat"]
        losses["loss"] = total
        return losses

    def validate(self) -> dict[str, float]:
        probs = predict_split(self.model, self.val, self.rt, self.pre, self.multilabel)
        out = scalar_metrics(self.multilabel)(probs, self.val.targets.numpy())
        if self.heads is not None:
            out.update(self.attention_diagnostics())
        return out

    @torch.no_grad()
    def attention_diagnostics(self, max_images: int = 256) -> dict[str, float]:
        """Per layer: MSE(map+, mask+) and the share of map+ mass inside the boxes, on boxed val images.

        ``att_mask_area`` is the mean share of the image the boxes cover: a map that ignores the boxes
        has ``inside`` close to it, a map that follows them has ``inside`` well above it.
        """
        assert self.heads is not None
        boxed = np.flatnonzero(self.val.has_box.numpy())[:max_images]
        if boxed.size == 0:
            return {}
        mse: dict[int, list[float]] = {i: [] for i in self.heads.layers}
        inside: dict[int, list[float]] = {i: [] for i in self.heads.layers}
        spread: dict[int, list[float]] = {i: [] for i in self.heads.layers}
        area: list[float] = []
        with eval_mode(self.model, self.heads):
            for start in range(0, boxed.size, 64):
                batch = self.val.batch(boxed[start:start + 64])
                x, mask = make_inputs(batch, self.rt, self.pre, None, None, with_mask=True)
                assert mask is not None
                area += mask.mean((1, 2, 3)).tolist()
                with self.rt.autocast():
                    _, maps_pos, _ = self.heads(self.model.forward_intermediates(x))
                for layer, mp in zip(self.heads.layers, maps_pos, strict=True):
                    mp = mp.float()
                    mk = torch.nn.functional.interpolate(mask, size=mp.shape[-2:], mode="area")
                    mse[layer] += ((mp - mk) ** 2).mean((1, 2, 3)).tolist()
                    inside[layer] += ((mp * mk).sum((1, 2, 3)) / mp.sum((1, 2, 3)).clamp_min(1e-6)).tolist()
                    spread[layer] += mp.flatten(1).std(1, correction=0).tolist()
        out = {"att_mask_area": float(np.mean(area))}  # what *_inside is for a map that ignores the boxes
        for layer in self.heads.layers:
            out[f"att{layer}_mse"] = float(np.mean(mse[layer]))
            out[f"att{layer}_inside"] = float(np.mean(inside[layer]))
            if float(np.mean(spread[layer])) < 1e-3:
                log.warning("MGACR map+ of layer %d has collapsed to a constant (mean spatial std %.2g): the "
                            "attention loss is not guiding it; try a lower weight or learning rate", layer,
                            float(np.mean(spread[layer])))
        return out

    def save_best(self, run_dir: Path, record: dict[str, Any]) -> None:
        meta = model_metadata(self.cfg, self.classes, self.task, self.arch)
        meta.update({"epoch": record["epoch"], "val": {k: v for k, v in record.items() if k.startswith("val_")}})
        save_weights(run_dir / "model.safetensors", self.model.state_dict(), meta)
        if self.heads is not None and self.tcfg.keep_attention_heads:
            save_weights(run_dir / "mgacr_heads.safetensors", self.heads.state_dict(),
                         {"kind": "mgacr_heads", "layers": list(self.heads.layers), "analysis_only": True})
