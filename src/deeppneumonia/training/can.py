"""Stage II task of the Cross-Attention Network method (``train.method=can``; models/can.py, losses/balance.py).

Image-level multi-label training only (boxes are never used): the two-branch network's logits go to the
multi-label balance loss, and its cross-attention maps to the attention loss::

    L = L_balance(logits, y) + can.attention_weight * L_attention(M, y)

Validation, thresholds, the saved checkpoint (arch ``can_resnet18``) and the test metrics are those of the
supervised task; a Stage I encoder initialises the shared trunk and branch A.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from deeppneumonia.config import Config
from deeppneumonia.data.batches import Batch, CachedSplit
from deeppneumonia.errors import ConfigError
from deeppneumonia.losses.balance import MultiLabelBalanceLoss, cross_attention_loss
from deeppneumonia.models.can import CrossAttentionResNet
from deeppneumonia.runtime.device import Runtime
from deeppneumonia.training.supervised import SupervisedTask
from deeppneumonia.transforms.inputs import make_inputs


class CANTask(SupervisedTask):
    """Cross-Attention Network training (``train.method=can``), in the one loop as a supervised task."""

    name = "train"

    def build_model(self, num_classes: int) -> CrossAttentionResNet:
        """The two-branch CAN network (``arch`` is recorded as ``can_resnet18``)."""
        self.arch = "can_resnet18"
        return CrossAttentionResNet(num_classes)

    def __init__(self, cfg: Config, train: CachedSplit, val: CachedSplit, rt: Runtime, classes: tuple[str, ...],
                 task: str, encoder: dict[str, Tensor] | None = None) -> None:
        """A supervised task with MGACR switched off (CAN reads no boxes) plus the multi-label balance loss.

        Raises ConfigError unless the data set is multi-label and ``train.arch`` is resnet18.
        """
        if task != "multilabel":
            raise ConfigError("train.method=can is a multi-label method: use a multi-label data set (NIH source "
                              "'nih', or a CSV with several label columns), or train.method=deep_pneumonia")
        if cfg.train.arch != "resnet18":
            raise ConfigError(f"train.method=can builds its own two-branch ResNet18; train.arch={cfg.train.arch!r}")
        t = cfg.train
        no_mgacr = dataclasses.replace(t.mgacr, attention=False, feature=False)  # CAN uses no boxes
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(t, mgacr=no_mgacr))
        super().__init__(cfg, train, val, rt, classes, task, encoder)
        c = t.can
        self.balance = MultiLabelBalanceLoss(train.targets, c.balance_gamma, c.balance_pos_weight).to(rt.device)

    def training_step(self, batch: Batch, g: torch.Generator) -> dict[str, Tensor]:
        """Losses of one batch: ``balance`` on the logits, ``attention`` on the cross-attention maps.

        ``loss = balance + train.can.attention_weight * attention``.
        """
        x, _ = make_inputs(batch, self.rt, self.pre, self.tcfg.augment, g)
        out = self.model.forward_all(x)  # type: ignore[operator]
        y = batch.target.to(self.rt.device, non_blocking=True)
        losses = {"balance": self.balance(out["logits"], y),
                  "attention": cross_attention_loss(out["att_logit_a"], out["att_logit_b"], y)}
        losses["loss"] = losses["balance"] + self.tcfg.can.attention_weight * losses["attention"]
        return losses
