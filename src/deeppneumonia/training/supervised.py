"""Stage II task: Deep Pneumonia supervised training (paper Sec. IV-C and IV-D).

The (optionally pre-trained) ResNet18 classifies; MGACR heads on the chosen residual layers produce
map+ and map-, pulled to the lesion mask and its inverse (Eqs. 2-4), and the attended features are
regulated contrastively (Eq. 5); the class-balanced focal loss (Eq. 9) with weights from the training
counts replaces cross-entropy. Total loss:

    L = L_cls + weight_attention * (L_att+ + L_att-) + weight_feature * L_feat      (Eq. 6, weighted)

Each Table I technique is a switch: ``train.pretrained``, ``train.mgacr.attention``,
``train.mgacr.feature``, ``train.loss.kind``; ``train.mgacr.form`` chooses the well-posed MGACR (default)
or the paper's literal Eqs. 2-6, ``train.mgacr.head`` the attention head. Images without boxes follow
``train.mgacr.no_box`` (default ``by_class``: mask+ = 0 for the negative class only); the run log says how
many training images each case covers. On the first ``train.mgacr.grad_norm_steps`` steps of each epoch
the gradient norm each weighted term sends into the backbone is measured (``train_gn_*`` in the log).
Validation scores images and, where the data has studies, studies (``study_*``; ``train.best_metric``
defaults to ``study_map``). It also measures, per layer, how close map+ is to the lesion mask on boxed
validation images, and warns when the maps collapse to a constant.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from deeppneumonia.config import Config
from deeppneumonia.data.batches import Batch, CachedSplit
from deeppneumonia.errors import ConfigError
from deeppneumonia.evaluation.metrics import aggregate_by_group, image_and_study_metrics
from deeppneumonia.inference.split import predict_split
from deeppneumonia.losses import ClassBalancedFocalLoss, MGACRLoss
from deeppneumonia.models.attention import MGACRHeads
from deeppneumonia.models.checkpoint import save_weights
from deeppneumonia.models.factory import build_classifier, load_encoder
from deeppneumonia.models.resnet import STAGE_CHANNELS, XRayResNet
from deeppneumonia.runtime import distributed
from deeppneumonia.runtime.device import Runtime, eval_mode
from deeppneumonia.transforms.inputs import make_inputs
from deeppneumonia.transforms.preprocessing import Preprocessing

log = logging.getLogger(__name__)

NEGATIVE_CLASS_PATTERN = re.compile(r"\b(negative|normal|no[ _-]?finding)\b", re.IGNORECASE)


def negative_class_index(classes: tuple[str, ...], name: str | None) -> int | None:
    """Index of the negative class: ``name`` (case-insensitive), else the one class matching
    :data:`NEGATIVE_CLASS_PATTERN` ("Negative for Pneumonia", "NORMAL", "No Finding"; not "Abnormal").

    Returns None when ``name`` is None and no class matches; raises ConfigError for an unknown ``name`` or
    several matching classes.
    """
    if name is not None:
        found = [i for i, c in enumerate(classes) if c.lower() == name.lower()]
        if not found:
            raise ConfigError(f"train.mgacr.negative_class={name!r} is not a class of the data set {list(classes)}")
        return found[0]
    found = [i for i, c in enumerate(classes) if NEGATIVE_CLASS_PATTERN.search(c)]
    if len(found) > 1:
        raise ConfigError(f"several classes look like the negative class ({[classes[i] for i in found]}): set "
                          "train.mgacr.negative_class=NAME")
    return found[0] if found else None


def box_policy_counts(has_box: Tensor, negative: Tensor) -> dict[str, int]:
    """Images of a split by how the box policies treat them: boxed, negative without box, other without box."""
    has_box, negative = has_box.bool(), negative.bool()
    return {"boxed": int(has_box.sum()), "negative_no_box": int((~has_box & negative).sum()),
            "positive_no_box": int((~has_box & ~negative).sum())}


def model_metadata(cfg: Config, classes: tuple[str, ...], task: str, arch: str) -> dict[str, Any]:
    """What travels with the inference weights: classes, preprocessing, config."""
    return {"kind": "classifier", "arch": arch, "in_chans": 1, "classes": list(classes), "task": task,
            "preprocessing": Preprocessing.from_config(cfg.data).to_meta(),
            "thresholds": None, "config": cfg.to_dict()}


def study_ids(split: CachedSplit) -> list[str] | None:
    """The images' study ids, or None when study-level metrics are not defined there (empty, or mixed labels)."""
    if not len(split):
        return None
    records = split.cache.manifest.records
    studies = [records[int(i)].study_id for i in split.indices]
    targets = split.targets.numpy()
    try:
        aggregate_by_group(np.zeros(targets.shape), targets, studies, split.cache.manifest.task == "multilabel")
    except ValueError as exc:  # images of a study disagree on the label
        log.warning("validation has no study level: %s", exc)
        return None
    return studies


def resolve_best_metric(name: str, multilabel: bool, has_studies: bool, final_fit: bool = False) -> str:
    """``train.best_metric`` as validation can compute it: ``last`` as is (the loop keeps the last epoch),
    ``auroc_macro`` for multi-label data, and the image-level metric when a ``study_`` one is asked for but the
    validation split has no study level."""
    if final_fit or name == "last":  # train.final_fit: validation images are training images, no selection
        return "last"
    if multilabel:
        return "auroc_macro"
    if name.startswith("study_") and not has_studies:
        log.warning("train.best_metric=%s: the validation split has no study level; %s picks the checkpoint",
                    name, name.removeprefix("study_"))
        return name.removeprefix("study_")
    return name


def load_encoder_checked(model: XRayResNet, encoder: dict[str, Tensor], rescale: bool = False,
                         stages: int = 4) -> None:
    """:func:`load_encoder` with a one-line error naming the setting when the encoder does not fit the network."""
    try:
        factors = load_encoder(model, encoder, rescale=rescale, stages=stages)
    except (ValueError, RuntimeError) as exc:
        raise ConfigError(f"train.encoder / the run's Stage I encoder does not fit train.arch: {exc}") from exc
    if stages < 4:
        log.info("Stage I encoder: stem and layer1..layer%d loaded, deeper layers as initialised", stages)
    if factors:
        log.info("Stage I encoder: %d convolutions scaled back to a fresh network's norms (x%.3g .. x%.3g)",
                 len(factors), min(factors.values()), max(factors.values()))


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
            load_encoder_checked(self.model, encoder, self.tcfg.encoder_rescale, self.tcfg.encoder_stages)
        m = self.tcfg.mgacr
        use_mgacr = m.attention or m.feature
        if use_mgacr and self.arch not in STAGE_CHANNELS:
            raise ValueError(f"MGACR needs a ResNet backbone, not {self.arch}; set train.mgacr.attention/feature=false")
        self.heads = MGACRHeads(m.layers, m.kernel_size, m.head, STAGE_CHANNELS[self.arch]) if use_mgacr else None
        self.negative_index: int | None = None
        self.no_box: str = m.no_box
        self.box_counts: dict[str, int] = {}
        if self.heads is not None:
            self._resolve_box_policy()
        lc = self.tcfg.loss
        beta, gamma = (lc.beta, lc.gamma) if lc.kind == "cb_focal" else (0.0, 0.0)  # (0, 0) = cross-entropy
        self.counts = train.class_counts()
        self.cls_loss = ClassBalancedFocalLoss(self.counts, beta=beta, gamma=gamma,
                                               mode="sigmoid" if self.multilabel else "softmax",
                                               label_smoothing=lc.label_smoothing).to(rt.device)
        self.mgacr_loss = MGACRLoss(reduction=m.reduction, form=m.form, feature_target=m.feature_target)
        self.batch_size = min(self.tcfg.optim.batch_size, len(train))
        self.images_per_batch = self.batch_size
        self.epoch_step = 0  # index in its epoch of the batch being trained on (for the gradient-norm steps)
        self.val_studies = study_ids(val)
        self.best_metric = self._resolve_best_metric(self.tcfg.best_metric)

    # --- construction helpers -----------------------------------------------------------------------------
    def _resolve_box_policy(self) -> None:
        """Find the negative class for ``no_box=by_class`` and log how many training images each case covers."""
        m = self.tcfg.mgacr
        self.negative_index = negative_class_index(self.classes, m.negative_class)
        has_box = self.train.has_box
        negative = (self.train.targets[:, self.negative_index] == 1 if self.negative_index is not None
                    else torch.zeros_like(has_box))
        counts = box_policy_counts(has_box, negative)
        self.box_counts = counts
        no_box = counts["negative_no_box"] + counts["positive_no_box"]
        if m.no_box == "by_class" and self.negative_index is None:
            self.no_box = "skip"
            if no_box:
                log.warning("train.mgacr.no_box=by_class: no class of %s is named like the negative class (%s); the "
                            "%d training images without boxes are left out of MGACR as with no_box=skip. Set "
                            "train.mgacr.negative_class=NAME to give that class's images mask+ = 0", list(self.classes),
                            NEGATIVE_CLASS_PATTERN.pattern, no_box)
        neg_name = self.classes[self.negative_index] if self.negative_index is not None else None
        zeroed = {"by_class": counts["negative_no_box"], "zero_mask": no_box, "skip": 0}[self.no_box]
        left_out = {"by_class": counts["positive_no_box"], "zero_mask": 0, "skip": no_box}[self.no_box]
        log.info("MGACR box policy %s (negative class %r), training split: %d image(s) with boxes use them, %d "
                 "without boxes get mask+ = 0, %d without boxes are left out of MGACR (they still train the "
                 "classifier); of the images without boxes %d are of the negative class, %d of others",
                 self.no_box, neg_name, counts["boxed"], zeroed, left_out, counts["negative_no_box"],
                 counts["positive_no_box"])

    def _resolve_best_metric(self, name: str) -> str:
        return resolve_best_metric(name, self.multilabel, self.val_studies is not None, self.tcfg.final_fit)

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
        """The epoch's shuffled batches; ``epoch_step`` is the index in the epoch of the batch last handed out, also
        when the loop skips the batches a resumed run already took (so the gradient-norm steps stay the same)."""
        batches = self.train.iterate(self.batch_size, shuffle=True, seed=self.cfg.run.seed * 7919 + epoch,
                                     drop_last=True, shard=True)
        for i, batch in enumerate(batches):
            self.epoch_step = i
            yield batch

    def _target(self, batch: Batch) -> Tensor:
        t = batch.target.to(self.rt.device, non_blocking=True)
        return t if self.multilabel else t.argmax(1)

    def training_step(self, batch: Batch, g: torch.Generator) -> dict[str, Tensor]:
        m = self.tcfg.mgacr
        x, mask = make_inputs(batch, self.rt, self.pre, self.tcfg.augment, g, with_mask=self.heads is not None)
        if self.heads is None:
            feats, logits = [], self.model(x)
        else:
            feats = self.model.forward_intermediates(x)
            logits = self.model.forward_head(feats[-1])
        losses = {"cls": self.cls_loss(logits.float(), self._target(batch))}
        weighted = {"cls": losses["cls"]}
        if self.heads is not None and mask is not None:
            f, mp, mn = self.heads(feats)
            negative = None
            if self.negative_index is not None:
                negative = (batch.target[:, self.negative_index] == 1).to(self.rt.device)
            parts = self.mgacr_loss(f, mp, mn, mask, batch.has_box.to(self.rt.device, non_blocking=True),
                                    use_attention=m.attention,
                                    use_feature=m.feature, no_box=self.no_box, negative=negative)  # type: ignore[arg-type]
            losses.update(parts)
            weighted.update({"att_pos": m.weight_attention * parts["att_pos"],
                             "att_neg": m.weight_attention * parts["att_neg"], "feat": m.weight_feature * parts["feat"]})
        losses["loss"] = torch.stack(list(weighted.values())).sum()
        if self.epoch_step < m.grad_norm_steps and torch.is_grad_enabled() and not distributed.is_distributed():
            losses.update(self._scaled_grad_norms(weighted))
        return losses

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The classifier's parameters without its last linear layer (what every loss term shares)."""
        return [p for name, p in self.model.named_parameters() if p.requires_grad and not name.startswith("fc.")]

    def grad_norms(self, terms: dict[str, Tensor]) -> dict[str, Tensor]:
        """``gn_<term>``: the L2 norm of the gradient each (weighted) loss term sends into the backbone.

        One ``torch.autograd.grad`` per term, on the backbone parameters only, keeping the graph for the
        optimiser's backward pass; nothing is accumulated in ``.grad``. Switched-off terms are left out.
        """
        params = self.backbone_parameters()
        out: dict[str, Tensor] = {}
        for name, term in terms.items():
            if term.grad_fn is None:
                continue
            grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
            sq = torch.zeros((), device=term.device)
            for g in grads:
                if g is not None:
                    sq = sq + g.float().square().sum()
            out[f"gn_{name}"] = sq.sqrt()
        return out

    def _scaled_grad_norms(self, terms: dict[str, Tensor]) -> dict[str, Tensor]:
        """:meth:`grad_norms`, scaled so that the loop's epoch mean (sum over the steps / steps) is their mean.

        The loop averages every returned entry over all the epoch's steps; these are returned only on the
        first ``grad_norm_steps`` steps, hence the factor steps / measured steps. (A run resumed within an
        epoch measures again at its first steps, so that epoch's ``train_gn_*`` counts those twice.)
        """
        norms = self.grad_norms(terms)
        log.info("gradient norms into the backbone, step %d: %s", self.epoch_step + 1,
                 ", ".join(f"{k} {float(v):.4g}" for k, v in norms.items()))
        steps = self.steps_per_epoch()
        factor = steps / max(1, min(self.tcfg.mgacr.grad_norm_steps, steps))
        return {k: v.detach() * factor for k, v in norms.items()}

    def validate(self) -> dict[str, float]:
        probs = predict_split(self.model, self.val, self.rt, self.pre, self.multilabel)
        # the tables lead with study-level scores (mean probability per study): validation selects on them too
        out = image_and_study_metrics(probs, self.val.targets.numpy(), self.val_studies, self.multilabel)
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
            m = self.tcfg.mgacr
            save_weights(run_dir / "mgacr_heads.safetensors", self.heads.state_dict(),
                         {"kind": "mgacr_heads", "layers": list(self.heads.layers), "head": m.head,
                          "kernel_size": m.kernel_size, "stage_channels": list(STAGE_CHANNELS[self.arch]),
                          "analysis_only": True})
