"""Losses of the Cross-Attention Network (CAN) method: a documented reconstruction (docs/method.md).

The CAN abstract asks for a loss "beyond cross-entropy" that (a) helps the cross-attention and (b) counters
the imbalance between positives and negatives within each finding and the dominance of easy samples. Its
equations are not public; these are the forms used here.

**Multi-label balance loss** (:class:`MultiLabelBalanceLoss`). For finding ``c`` with sigmoid probability
``p`` and label ``y`` in {0, 1} (NaN = unknown, left out):

.. math::

    \\ell_c = -\\big[ w^+_c \\, (1 - p)^\\gamma \\, y \\log p + w^-_c \\, p^\\gamma \\, (1 - y) \\log (1 - p) \\big]

averaged over the known (image, finding) pairs. ``w+_c = P_c / (2 n+_c)`` and ``w-_c = P_c / (2 n-_c)``
where ``n+_c``, ``n-_c`` count the known positives and negatives of finding ``c`` and ``P_c = n+_c + n-_c``,
so both halves of each finding weigh the same however rare it is (the within-finding imbalance), and
``gamma`` down-weights easy samples (the focal term of Lin et al.). ``pos_weight="dataset"`` takes the
counts from the training split, ``"batch"`` from each batch, ``"none"`` sets all weights to 1.
Limits (tested): ``gamma = 0, pos_weight="none"`` is binary cross-entropy; ``gamma = 0`` is BCE with
``pos_weight = w+ / w-`` up to the factor ``w-`` per finding, i.e. a weighted BCE.

**Attention loss** (:func:`cross_attention_loss`). Only image labels exist, so the cross-attention map
``M_c`` of finding ``c`` is trained as a multiple-instance detector: its peak is the probability that the
finding is present somewhere, ``q_c = max_xy M_c``, and ``BCE(q_c, y_c)`` (known labels only) asks for a
peak where the finding is and no attention where it is not. This is what "helps the cross-attention".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PosWeight = Literal["dataset", "batch", "none"]


def balance_weights(targets: Tensor) -> tuple[Tensor, Tensor]:
    """(w+, w-) per finding from (N, C) targets with 0, 1 or NaN; a finding with no positives (negatives) gets 1."""
    known = ~torch.isnan(targets)
    pos = ((targets == 1) & known).sum(0).float()
    neg = ((targets == 0) & known).sum(0).float()
    total = pos + neg
    w_pos = torch.where(pos > 0, total / (2 * pos.clamp_min(1)), torch.ones_like(pos))
    w_neg = torch.where(neg > 0, total / (2 * neg.clamp_min(1)), torch.ones_like(neg))
    return w_pos, w_neg


class MultiLabelBalanceLoss(nn.Module):
    """The multi-label balance loss of the CAN reconstruction (module docstring); fp32, NaN labels masked."""

    w_pos: Tensor
    w_neg: Tensor

    def __init__(self, train_targets: Tensor | Sequence[Sequence[float]] | None = None, gamma: float = 2.0,
                 pos_weight: PosWeight = "dataset") -> None:
        """Take ``w+``/``w-`` from ``train_targets`` (N, C) for ``pos_weight="dataset"``.

        Raises ValueError for ``gamma < 0``, an unknown ``pos_weight`` or ``"dataset"`` without training targets.
        """
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0; got {gamma}")
        if pos_weight not in ("dataset", "batch", "none"):
            raise ValueError(f"pos_weight must be dataset, batch or none; got {pos_weight!r}")
        if pos_weight == "dataset" and train_targets is None:
            raise ValueError("pos_weight='dataset' needs the training targets")
        self.gamma, self.pos_weight = float(gamma), pos_weight
        if pos_weight == "dataset":
            wp, wn = balance_weights(torch.as_tensor(train_targets, dtype=torch.float32))
        else:
            wp = wn = torch.ones(0)
        self.register_buffer("w_pos", wp)
        self.register_buffer("w_neg", wn)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """The balance loss (module docstring) of (N, C) logits and 0/1/NaN targets: scalar fp32.

        Averaged over the known (image, finding) pairs; ValueError unless both are (N, C) of one shape.
        """
        if logits.shape != target.shape or logits.ndim != 2:
            raise ValueError(f"logits and target must both be (N, C); got {tuple(logits.shape)}, {tuple(target.shape)}")
        with torch.autocast(device_type=logits.device.type, enabled=False):
            logits, target = logits.float(), target.float()
            known = ~torch.isnan(target)
            y = torch.where(known, target, torch.zeros_like(target))
            if self.pos_weight == "dataset":
                wp, wn = self.w_pos.to(logits.device), self.w_neg.to(logits.device)
            elif self.pos_weight == "batch":
                wp, wn = balance_weights(target)
            else:
                wp = wn = torch.ones(logits.shape[1], device=logits.device)
            log_p, log_1mp = F.logsigmoid(logits), F.logsigmoid(-logits)
            pos, neg = y * log_p, (1 - y) * log_1mp
            if self.gamma:
                pos = torch.exp(self.gamma * log_1mp) * pos
                neg = torch.exp(self.gamma * log_p) * neg
            elem = -(wp * pos + wn * neg)
            elem = torch.where(known, elem, torch.zeros_like(elem))
            return elem.sum() / known.sum().clamp_min(1)


def cross_attention_loss(logit_a: Tensor, logit_b: Tensor, target: Tensor) -> Tensor:
    """BCE between the peak of each finding's cross-attention map and its label; NaN labels masked.

    Takes the two branches' attention *logits* (B, C, h, w): ``log M = logsigmoid(l_A) + logsigmoid(l_B)`` and
    ``log q = max_xy log M`` are computed in fp32 in log space, so a saturated map (M == 1 in bf16) still has a
    gradient; ``log(1 - q) = log(-expm1(log q))``.
    """
    with torch.autocast(device_type=logit_a.device.type, enabled=False):
        log_m = F.logsigmoid(logit_a.float()) + F.logsigmoid(logit_b.float())
        log_q = log_m.flatten(2).amax(2)
        log_1mq = torch.log(-torch.expm1(log_q).clamp(max=-1e-30))  # q < 1 always; the clamp guards q == 1
        target = target.float()
        known = ~torch.isnan(target)
        y = torch.where(known, target, torch.zeros_like(target))
        elem = -(y * log_q + (1 - y) * log_1mq)
        elem = torch.where(known, elem, torch.zeros_like(elem))
        return elem.sum() / known.sum().clamp_min(1)
