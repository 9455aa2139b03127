"""Stage I task: SimCLR self-supervised pre-training of the encoder (paper Sec. IV-B, Eq. 1).

Two augmented views of each training image go through the shared encoder and the MLP projector; the
InfoNCE loss (temperature 0.2) pulls the views of one image together against the 2N-2 other views.
Labels are never used for training. Each epoch also reports the contrastive loss and accuracy (paper
Fig. 6) on fixed views of the validation split and, on a labelled multi-class validation split, a
weighted kNN accuracy (Wu et al. 2018) of the encoder's pooled features, so the user sees whether
pre-training helps. The encoder kept (``pretrain.select``) is the last epoch's (default), the one with the
lowest validation contrastive loss, or the one with the best kNN accuracy; it is saved without the projector.
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
from deeppneumonia.data.batches import Batch, CachedSplit, UnlabelledUnion
from deeppneumonia.errors import ConfigError
from deeppneumonia.evaluation.probe import embed, knn_accuracy
from deeppneumonia.losses import InfoNCELoss, contrastive_accuracy
from deeppneumonia.models.checkpoint import save_weights
from deeppneumonia.models.factory import build_classifier, encoder_state
from deeppneumonia.models.projector import Projector
from deeppneumonia.models.resnet import STAGE_CHANNELS
from deeppneumonia.runtime import distributed
from deeppneumonia.runtime.device import Runtime, eval_mode
from deeppneumonia.transforms.inputs import make_inputs
from deeppneumonia.transforms.preprocessing import Preprocessing

log = logging.getLogger(__name__)

# pretrain.select -> the key of validate() that picks the encoder (higher is better)
SELECT_METRIC = {"last": "last_epoch", "val_loss": "neg_contrastive_loss", "knn": "knn_accuracy"}


class SimCLRTask:
    name = "pretrain"

    def __init__(self, cfg: Config, train: CachedSplit, val: CachedSplit | None, rt: Runtime,
                 multiclass: bool, arch: str = "resnet18", extra: list[CachedSplit] | None = None) -> None:
        """Encoder (ResNet without ``fc``), projector and InfoNCE loss; pools ``extra`` with the training split.

        Raises ConfigError for ``pretrain.select=knn`` without a kNN probe, ValueError for fewer than 2 images.
        """
        self.cfg, self.train, self.val, self.rt = cfg, train, val, rt
        self.pre = Preprocessing.from_config(cfg.data)
        # the images Stage I trains on: the training split, plus unlabelled images of other data sets
        self.pool: CachedSplit | UnlabelledUnion = UnlabelledUnion([train, *extra]) if extra else train
        self.pcfg = cfg.pretrain
        self.multiclass = multiclass
        self.arch = arch
        self.encoder = build_classifier(1, arch)
        self.encoder.fc = nn.Identity()  # type: ignore[assignment]  # no classifier in Stage I
        self.projector = Projector(STAGE_CHANNELS[arch][-1], self.pcfg.proj_hidden, self.pcfg.proj_dim)
        self.loss = InfoNCELoss(self.pcfg.temperature)
        self.with_knn = multiclass and val is not None and len(val) > 0 and self.pcfg.knn_k > 0
        if self.pcfg.select == "knn" and not self.with_knn:
            raise ConfigError("pretrain.select=knn needs a multi-class data set with a validation split and "
                              "pretrain.knn_k > 0; use pretrain.select=last or val_loss")
        self.best_metric = SELECT_METRIC[self.pcfg.select]
        self.epoch = 0
        bs = self.pcfg.optim.batch_size
        if len(self.pool) < 2:
            raise ValueError("SimCLR needs at least 2 training images")
        self.batch_size = min(bs, len(self.pool))
        self.images_per_batch = self.batch_size
        self.ddp_find_unused = False

    def modules(self) -> dict[str, nn.Module]:
        """The encoder and the projection head."""
        return {"encoder": self.encoder, "projector": self.projector}

    def steps_per_epoch(self) -> int:
        """Full batches per epoch of the image pool."""
        return len(self.pool) // self.batch_size

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        """The epoch's shuffled, sharded batches of the image pool."""
        self.epoch = epoch
        return self.pool.iterate(self.batch_size, shuffle=True, seed=self.cfg.run.seed * 7919 + epoch,
                                  drop_last=True, shard=True)

    def _views(self, batch: Batch, g: torch.Generator) -> Tensor:
        """Two independently augmented views of the batch, concatenated: (2B, 1, S, S)."""
        x1, _ = make_inputs(batch, self.rt, self.pre, self.pcfg.augment, g)
        x2, _ = make_inputs(batch, self.rt, self.pre, self.pcfg.augment, g)
        return torch.cat([x1, x2])

    def _project(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Projections (z1, z2) of the two halves of ``x`` (encoder, pooling, projector)."""
        h = self.encoder.forward_head(self.encoder.forward_features(x), pre_logits=True)
        z = self.projector(h)
        return z.chunk(2)  # type: ignore[return-value]

    def training_step(self, batch: Batch, g: torch.Generator) -> dict[str, Tensor]:
        """InfoNCE loss (Eq. 1) and contrastive accuracy of one batch.

        Under torchrun the projections of every rank are gathered with gradients and this rank's rows are the anchors.
        """
        z1, z2 = self._project(self._views(batch, g))
        if not distributed.is_distributed():
            return {"loss": self.loss(z1, z2), "contrastive_accuracy": contrastive_accuracy(z1, z2)}
        # negatives from every rank: gathered with gradients, this rank's rows as anchors
        n, r = z1.shape[0], distributed.rank()
        g1, g2 = distributed.gather_with_grad(z1), distributed.gather_with_grad(z2)
        own = torch.arange(r * n, (r + 1) * n, device=z1.device)
        anchors = torch.cat([own, own + g1.shape[0]])
        return {"loss": self.loss(g1, g2, anchors), "contrastive_accuracy": contrastive_accuracy(g1, g2)}

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Contrastive loss and accuracy on fixed views of the validation split (training split if under 2 images).

        Also ``neg_contrastive_loss``, ``last_epoch`` (for ``pretrain.select``) and, with the probe, ``knn_accuracy``.
        """
        out: dict[str, float] = {}
        split = self.val if self.val is not None and len(self.val) >= 2 else self.train
        g = torch.Generator().manual_seed(12345)  # the same views every epoch
        losses, accs = [], []
        with eval_mode(self.encoder, self.projector):
            for batch in split.iterate(min(self.batch_size, len(split)), drop_last=True):
                with self.rt.autocast():
                    z1, z2 = self._project(self._views(batch, g))
                losses.append(float(self.loss(z1, z2)))
                accs.append(float(contrastive_accuracy(z1, z2)))
        out["contrastive_loss"] = float(np.mean(losses)) if losses else float("nan")
        out["neg_contrastive_loss"] = -out["contrastive_loss"]  # for select=val_loss (the loop keeps the highest)
        out["contrastive_accuracy"] = float(np.mean(accs)) if accs else float("nan")
        out["last_epoch"] = float(self.epoch + 1)  # for select=last: every epoch is an improvement
        if self.with_knn and self.val is not None:
            tf = embed(self.encoder, self.train, self.rt, self.pre)
            vf = embed(self.encoder, self.val, self.rt, self.pre)
            out["knn_accuracy"] = knn_accuracy(tf, self.train.targets.argmax(1), vf, self.val.targets.argmax(1),
                                               self.pcfg.knn_k)
        return out

    def save_best(self, run_dir: Path, record: dict[str, Any]) -> None:
        """Write ``encoder.safetensors`` with its architecture, preprocessing, epoch and config."""
        d = self.cfg.data
        save_weights(run_dir / "encoder.safetensors", encoder_state(self.encoder),  # type: ignore[arg-type]
                     {"kind": "encoder", "arch": self.arch, "in_chans": 1, "size": d.size, "resize": d.resize,
                      "mean": d.mean, "std": d.std, "epoch": record["epoch"], "selected_by": self.pcfg.select,
                      "config": self.cfg.to_dict()})
