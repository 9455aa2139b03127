"""Stage II task: Iterative Attention Mining (Cai et al. 2018, "Iterative attention mining for weakly
supervised thoracic disease pattern localization in chest X-rays"; a reconstruction: no code was published).

Image labels are the only supervision (lesion boxes are never read). The schedule is a function of the
epoch number alone, so a killed run resumes exactly (``train.iam``, see :class:`~deeppneumonia.config.IAMConfig`):

* **round 0** (epochs ``0 .. W-1``, W = ``warmup_epochs``): train the classifier, ``L = L_cls(f(x), y)``.
* **mining round k = 1 .. K** (``epochs_per_iteration`` epochs each): at its first epoch the current network
  is copied into ``rounds[k-1]`` (frozen: no gradients, eval mode). Every positive image is erased
  cumulatively: ``x_0 = x``, ``x_j = erase(x_{j-1}, S_j)`` with ``S_j`` the salient region (class map of each
  positive label >= ``erase_threshold`` x its max, union over labels) of the frozen network of round j-1 on
  ``x_{j-1}``, for j = 1..k. The network is then trained on the erased image, so it must find other
  evidence, while the knowledge-preservation (KP) loss keeps its responses on the *original* image close to
  the frozen network of round k-1:

      L = L_cls(f(x_k), y) + kp_weight * KP(f_{k-1}(x), f(x))

  with KP = KL(p_{k-1} || p) on softmax (multi-class) or per-label Bernoulli (multi-label) probabilities, or
  the mean squared difference of the logits (:func:`kp_loss`).

Learning rate (``train.iam.round_schedule``, :func:`iam_lr_factor`): by default round 0 runs ``train.optim``'s
warm-up and schedule over its own epochs, and every mining round restarts at ``round_lr`` x ``train.optim.lr``
without warm-up and decays by a cosine inside the round; ``global`` keeps ``train.optim``'s schedule over the
whole run (before issue 18: a one-epoch run then spent its mining round warming the rate up).

Negative images (only negative classes, see ``negative_classes``) are never erased: they carry no lesion to
mine. The final localization map of an image for class c is the ``aggregate`` (max or mean) of the
normalised maps of the networks of rounds 0..K (:mod:`deeppneumonia.evaluation.iam_maps`); those networks
are saved next to the inference model in ``iam_rounds.safetensors`` (rounds 0..K-1; round K is
``model.safetensors``, chosen by the validation metric among the epochs of the last round).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from deeppneumonia.config import Config, IAMConfig, OptimConfig
from deeppneumonia.data.batches import Batch, CachedSplit
from deeppneumonia.errors import ConfigError
from deeppneumonia.evaluation.metrics import image_and_study_metrics
from deeppneumonia.inference.split import predict_split
from deeppneumonia.losses import ClassBalancedFocalLoss
from deeppneumonia.losses.knowledge import kp_loss
from deeppneumonia.models.cam import class_maps, salient_mask
from deeppneumonia.models.checkpoint import load_weights, save_weights
from deeppneumonia.models.factory import build_classifier, load_encoder
from deeppneumonia.models.msa import msa_arch
from deeppneumonia.runtime.device import Runtime
from deeppneumonia.training.loop import lr_factor
from deeppneumonia.training.supervised import load_encoder_checked, model_metadata, resolve_best_metric, study_ids
from deeppneumonia.transforms.erase import erase
from deeppneumonia.transforms.inputs import make_inputs
from deeppneumonia.transforms.preprocessing import Preprocessing

log = logging.getLogger(__name__)

ROUNDS_FILE = "iam_rounds.safetensors"


def positive_labels(target: Tensor, classes: tuple[str, ...], negative: tuple[str, ...]) -> Tensor:
    """(B, C) bool: labels to mine, i.e. the image's positive labels that are not negative classes (NaN = no)."""
    neg = {n.lower() for n in negative}
    keep = torch.tensor([c.lower() not in neg for c in classes], device=target.device)
    return (target == 1) & keep


class RoundNetworks(nn.Module):
    """The frozen networks of rounds 0..K-1 (``nets[k-1]`` is the frozen copy of mining round k).

    Always in eval mode and without gradients; in ``modules()`` so that ``last.pt`` saves them for resuming.
    ``started`` (a buffer, saved too) counts the copies made, so a resumed epoch does not copy again.
    """

    started: Tensor

    def __init__(self, k: int, factory: Callable[[], nn.Module]) -> None:
        """``k`` frozen networks made by ``factory`` and the ``started`` counter, in eval mode."""
        super().__init__()
        self.nets = nn.ModuleList(factory() for _ in range(k))
        for p in self.nets.parameters():
            p.requires_grad_(False)
        self.register_buffer("started", torch.zeros((), dtype=torch.long))
        super().train(False)

    def train(self, mode: bool = True) -> RoundNetworks:  # the loop calls train() on every module
        """Stay in eval mode whatever ``mode`` asks (the frozen networks are never trained)."""
        return super().train(False)

    def snapshot(self, k: int, model: nn.Module) -> None:
        """Make ``nets[k-1]`` a frozen copy of ``model`` (the start of mining round k)."""
        self.nets[k - 1].load_state_dict(model.state_dict())
        self.started.fill_(k)


def check_schedule(ic: IAMConfig, epochs: int) -> None:
    """Raise ConfigError unless the IAM settings are valid and ``epochs`` equals their schedule.

    The schedule is ``warmup_epochs + iterations * epochs_per_iteration`` epochs (warm-up >= 1 unless ``init`` is set).
    """
    expected = ic.warmup_epochs + ic.iterations * ic.epochs_per_iteration
    if ic.warmup_epochs < (0 if ic.init else 1) or ic.iterations < 0 or ic.epochs_per_iteration < 1:
        raise ConfigError("train.iam: warmup_epochs must be >= 1 (>= 0 with train.iam.init), epochs_per_iteration "
                          ">= 1, iterations >= 0")
    if epochs != expected:
        raise ConfigError(f"train.method=iam: train.optim.epochs is {epochs} but the IAM schedule needs "
                          f"warmup_epochs + iterations * epochs_per_iteration = {ic.warmup_epochs} + {ic.iterations}"
                          f" * {ic.epochs_per_iteration} = {expected}; set train.optim.epochs={expected}")
    if not ic.round_lr > 0:
        raise ConfigError(f"train.iam.round_lr must be > 0, got {ic.round_lr}")
    if not 0 < ic.erase_threshold <= 1:
        raise ConfigError(f"train.iam.erase_threshold must be in (0, 1], got {ic.erase_threshold}")


def iam_lr_factor(step: int, steps_per_epoch: int, ic: IAMConfig, optim: OptimConfig) -> float | None:
    """Learning-rate multiplier of optimizer step ``step`` of an IAM run (None: the loop's own schedule).

    ``round_schedule``: ``global`` -> None (``train.optim`` over the whole run). Otherwise round 0 (epochs
    ``0 .. warmup_epochs-1``) follows ``train.optim``'s warm-up and schedule over those epochs alone, and a
    mining round of n steps, at its step s (0-based within the round), gets ``round_lr * (1 + cos(pi s / n)) / 2``
    (``cosine``: starts at ``round_lr``, never ramps up, reaches 0 at the round's end) or ``round_lr``
    (``constant``). Steps past the last round (the loop's final scheduler step) get the last round's end value.
    """
    if ic.round_schedule == "global":
        return None
    spe = max(1, int(steps_per_epoch))
    epoch = step // spe
    if epoch < ic.warmup_epochs:
        total = ic.warmup_epochs * spe
        return lr_factor(step, total, min(total, int(optim.warmup_epochs * spe)), optim.schedule)
    n = ic.epochs_per_iteration * spe
    k = min(max(ic.iterations, 1), (epoch - ic.warmup_epochs) // ic.epochs_per_iteration + 1)
    s = min(n, step - (ic.warmup_epochs + (k - 1) * ic.epochs_per_iteration) * spe)
    if ic.round_schedule == "constant":
        return float(ic.round_lr)
    return float(ic.round_lr * 0.5 * (1 + math.cos(math.pi * s / n)))


class IAMTask:
    """Warm-up then attention-mining rounds, one object run by the one training loop (``training/loop.py``)."""

    name = "train"

    def __init__(self, cfg: Config, train: CachedSplit, val: CachedSplit, rt: Runtime, classes: tuple[str, ...],
                 task: str, encoder: dict[str, Tensor] | None = None) -> None:
        """Build the (MSA) ResNet classifier, the round networks and the classification loss.

        Starts from ``encoder`` and/or ``train.iam.init`` when given. Raises ConfigError for a schedule that does
        not match ``train.optim.epochs``, a non-ResNet architecture, or negative classes that cover every class.
        """
        self.cfg, self.ic, self.train, self.val, self.rt = cfg, cfg.train.iam, train, val, rt
        self.pre = Preprocessing.from_config(cfg.data)
        check_schedule(self.ic, cfg.train.optim.epochs)
        self.classes, self.task = tuple(classes), task
        self.multilabel = task == "multilabel"
        self.arch = msa_arch(cfg.train.arch, self.ic.msa_layers) if self.ic.msa else cfg.train.arch
        if not self.arch.startswith("resnet"):
            raise ConfigError(f"IAM needs a ResNet classifier (CAM from GAP + fc), not {cfg.train.arch}")
        n = len(classes)
        self.model = build_classifier(n, self.arch)
        if encoder is not None:
            load_encoder_checked(self.model, encoder, cfg.train.encoder_rescale, cfg.train.encoder_stages)
        if self.ic.init:
            self._load_init(Path(self.ic.init).expanduser())
        self.rounds = RoundNetworks(self.ic.iterations, lambda: build_classifier(n, self.arch))
        lc = cfg.train.loss
        beta, gamma = (lc.beta, lc.gamma) if lc.kind == "cb_focal" else (0.0, 0.0)
        self.cls_loss = ClassBalancedFocalLoss(train.class_counts(), beta=beta, gamma=gamma,
                                               mode="sigmoid" if self.multilabel else "softmax",
                                               label_smoothing=lc.label_smoothing).to(rt.device)
        self.batch_size = min(cfg.train.optim.batch_size, len(train))
        self.images_per_batch = self.batch_size
        # an MSA network that does not aggregate layer4 leaves it without gradient: DDP must look for unused ones
        self.ddp_find_unused = self.ic.msa and 4 not in self.ic.msa_layers
        self.val_studies = study_ids(val)
        self.metric = resolve_best_metric(cfg.train.best_metric, self.multilabel, self.val_studies is not None,
                                          cfg.train.final_fit)
        # iam_selection = self.metric in the last round, -1 before (see validate); "last": the loop keeps the last epoch
        self.best_metric = "last" if self.metric == "last" else "iam_selection"
        self.round = 0
        if not any(c.lower() not in {m.lower() for m in self.ic.negative_classes} for c in classes):
            raise ConfigError(f"train.iam.negative_classes {self.ic.negative_classes} covers every class {classes}")

    def _load_init(self, path: Path) -> None:
        """Start from a trained classifier: all of it when arch and classes match, else its backbone only."""
        state, meta = load_weights(path)
        if meta.get("kind") != "classifier":
            raise ConfigError(f"train.iam.init: {path} is not a classifier checkpoint (model.safetensors)")
        if meta.get("arch") == self.arch and list(meta.get("classes", [])) == list(self.classes):
            self.model.load_state_dict(state)
        else:
            load_encoder(self.model, {k: v for k, v in state.items() if not k.startswith(("fc.", "msa."))})
        log.info("IAM starts from %s (%s)", path, "whole network" if meta.get("arch") == self.arch else "backbone")

    # --- schedule -------------------------------------------------------------------------------------------
    def round_of(self, epoch: int) -> int:
        """0 during warm-up, k during mining round k (1-based)."""
        if epoch < self.ic.warmup_epochs:
            return 0
        return min(self.ic.iterations, (epoch - self.ic.warmup_epochs) // self.ic.epochs_per_iteration + 1)

    def modules(self) -> dict[str, nn.Module]:
        """The trained classifier and the frozen round networks (both saved in ``last.pt``)."""
        return {"model": self.model, "iam_rounds": self.rounds}

    def lr_factor(self, step: int, steps_per_epoch: int) -> float | None:
        """The loop's per-task schedule hook: :func:`iam_lr_factor` with this run's settings."""
        return iam_lr_factor(step, steps_per_epoch, self.ic, self.cfg.train.optim)

    def steps_per_epoch(self) -> int:
        """Full batches per epoch (at least 1)."""
        return max(1, len(self.train) // self.batch_size)

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        """The epoch's shuffled, sharded batches; a mining round's first epoch (not a resumed one) snapshots the model."""
        self.round = self.round_of(epoch)
        if self.round > int(self.rounds.started):  # first epoch of a mining round (not a resumed one)
            self.rounds.snapshot(self.round, self.model)
            log.info("IAM: mining round %d/%d starts at epoch %d (frozen copy taken)", self.round,
                     self.ic.iterations, epoch + 1)
        return self.train.iterate(self.batch_size, shuffle=True, seed=self.cfg.run.seed * 7919 + epoch,
                                  drop_last=True, shard=True)

    # --- one step -------------------------------------------------------------------------------------------
    def _target(self, batch: Batch) -> Tensor:
        """The batch's targets on the device: (B, C) for multi-label, class indices (B,) otherwise."""
        t = batch.target.to(self.rt.device, non_blocking=True)
        return t if self.multilabel else t.argmax(1)

    @torch.no_grad()
    def mine(self, x: Tensor, target: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Cumulatively erased images for round k and the erased mask, both (B, 1, H, W)."""
        select = positive_labels(target.to(x.device), self.classes, self.ic.negative_classes)
        erased, union = x, torch.zeros_like(x, dtype=torch.bool)
        zero = (0.0 - self.cfg.data.mean) / self.cfg.data.std
        for j in range(k):
            maps, _ = class_maps(self.rounds.nets[j], erased, self.ic.heatmap)
            union |= salient_mask(maps, select, self.ic.erase_threshold, (x.shape[-2], x.shape[-1]))
            erased = erase(x, union, self.ic.erase_fill, zero)
        return erased, union

    def training_step(self, batch: Batch, g: torch.Generator) -> dict[str, Tensor]:
        """Losses of one batch: ``cls`` in round 0; in round k ``cls`` on the erased images plus ``kp``.

        ``kp`` compares the model's logits on the original images with the frozen round k-1 network's;
        ``loss = cls + kp_weight * kp``, and ``erased_area`` is the share of erased pixels.
        """
        x, _ = make_inputs(batch, self.rt, self.pre, self.cfg.train.augment, g)
        target = self._target(batch)
        if self.round == 0:
            cls = self.cls_loss(self.model(x).float(), target)
            return {"cls": cls, "loss": cls}
        erased, mask = self.mine(x, batch.target, self.round)
        b = x.shape[0]
        logits = self.model(torch.cat([erased, x])).float()
        with torch.no_grad():
            frozen = self.rounds.nets[self.round - 1](x).float()
        cls = self.cls_loss(logits[:b], target)
        kp = kp_loss(logits[b:], frozen, self.ic.kp_loss, self.multilabel)
        return {"cls": cls, "kp": kp, "erased_area": mask.float().mean().detach(),
                "loss": cls + self.ic.kp_weight * kp}

    # --- validation and saving ------------------------------------------------------------------------------
    def validate(self) -> dict[str, float]:
        """Image and study metrics on the validation split, plus ``iam_round`` and ``iam_selection``.

        ``iam_selection`` is the chosen metric in the last round and -1 before, so the best model comes from the last round.
        """
        probs = predict_split(self.model, self.val, self.rt, self.pre, self.multilabel)
        out = image_and_study_metrics(probs, self.val.targets.numpy(), self.val_studies, self.multilabel)
        out["iam_round"] = float(self.round)
        out["iam_selection"] = float(out.get(self.metric, 0.0)) if self.round == self.ic.iterations else -1.0
        return out

    def save_best(self, run_dir: Path, record: dict[str, Any]) -> None:
        """``model.safetensors`` (the network of this epoch) and ``iam_rounds.safetensors`` (rounds 0..k-1)."""
        meta = model_metadata(self.cfg, self.classes, self.task, self.arch)
        meta.update({"epoch": record["epoch"], "val": {k: v for k, v in record.items() if k.startswith("val_")},
                     "iam_round": self.round})
        save_weights(run_dir / "model.safetensors", self.model.state_dict(), meta)
        k = int(self.rounds.started)
        state = {f"round{j}.{name}": v for j in range(k) for name, v in self.rounds.nets[j].state_dict().items()}
        save_weights(run_dir / ROUNDS_FILE, state,
                     {"kind": "iam_rounds", "arch": self.arch, "classes": list(self.classes), "rounds": k,
                      "heatmap": self.ic.heatmap, "aggregate": self.ic.aggregate, "in_chans": 1,
                      "note": f"networks of rounds 0..{k - 1}; round {k} is model.safetensors"})
