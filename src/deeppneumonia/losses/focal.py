"""Class-balanced focal loss of the re-training stage (paper Eqs. 7-9, Cui et al. 2019).

Eq. (7)  ``CE(p_t) = -log(p_t)``
Eq. (8)  ``FL(p_t) = -(1 - p_t)^gamma log(p_t)``
Eq. (9)  ``CB_focal(p_t) = -(1 - beta) / (1 - beta^{n_y}) (1 - p_t)^gamma log(p_t)``

where ``n_y`` is the number of training samples of the ground-truth class ``y``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ClassBalancedFocalLoss", "class_balanced_weights"]

logger = logging.getLogger(__name__)

FocalMode = Literal["softmax", "sigmoid"]


def class_balanced_weights(counts: Sequence[int] | Tensor, beta: float) -> Tensor:
    """Class-balanced weights ``(1 - beta) / (1 - beta^{n_y})`` of paper Eq. (9) (Cui et al. 2019).

    ``(1 - beta^n) / (1 - beta)`` is the "effective number" of samples of a class with ``n`` samples;
    the weight is its inverse. As in Cui et al. (2019, and their reference implementation) the weights
    are then **normalised so that they sum to the number of classes** ``C``, which keeps the overall
    loss scale comparable to unweighted cross-entropy whatever ``beta`` is. ``beta = 0`` gives all
    ones; ``beta -> 1`` approaches inverse-frequency weighting.

    Classes with a count of 0 (no training sample) would get an infinite weight. The choice made here:
    such a class gets the **largest weight among the classes that do have samples** (it is at least as
    rare as the rarest observed class, and the weight stays finite), and a warning is logged. If no
    class has a sample, all weights are 1. The normalisation to sum ``C`` is applied afterwards.

    Computed in float64 (``beta^n`` for ``beta = 0.9999`` and large ``n``), returned as float32.

    Args:
        counts: number of training samples per class, shape (C,), non-negative integers.
        beta: hyper-parameter of Eq. (9), in [0, 1).

    Returns:
        Weights of shape (C,), float32, summing to C.
    """
    counts_t = torch.as_tensor(counts).detach().to(device="cpu", dtype=torch.float64)
    if counts_t.ndim != 1 or counts_t.numel() == 0:
        raise ValueError(f"counts must be a non-empty 1-D sequence; got shape {tuple(counts_t.shape)}")
    if not torch.isfinite(counts_t).all() or (counts_t < 0).any():
        raise ValueError(f"counts must be finite and non-negative; got {counts_t.tolist()}")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1); got {beta}")

    num_classes = counts_t.numel()
    present = counts_t > 0
    if not present.any():
        logger.warning("class_balanced_weights: every class count is 0; using uniform weights")
        return torch.ones(num_classes, dtype=torch.float32)

    # beta ** n with beta = 0 and n > 0 is 0, so beta = 0 gives exactly (1 - 0) / (1 - 0) = 1.
    effective_num = 1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts_t[present])
    weights = torch.empty(num_classes, dtype=torch.float64)
    weights[present] = (1.0 - beta) / effective_num
    if not present.all():
        missing = torch.nonzero(~present).flatten().tolist()
        logger.warning(
            "class_balanced_weights: classes %s have no training sample; giving them the largest "
            "weight of the observed classes",
            missing,
        )
        weights[~present] = weights[present].max()
    weights = weights / weights.sum() * num_classes
    return weights.to(torch.float32)


class ClassBalancedFocalLoss(nn.Module):
    """Class-balanced focal loss, paper Eq. (9) (focal term Eq. 8, cross-entropy Eq. 7).

    ``loss = -w_y (1 - p_t)^gamma log(p_t)`` with ``w_y`` the normalised class-balanced weight of
    :func:`class_balanced_weights` (stored as the buffer ``weights``, so it follows ``.to(device)`` and
    is saved in the state dict).

    Two modes:

    * ``"softmax"`` (single-label, as in the paper): ``p_t`` is the softmax probability of the target
      class. ``forward(logits (N, C), target (N,) int64)`` returns the plain **mean over the batch** of
      the per-sample losses (not the weight-normalised mean that ``F.cross_entropy(weight=...)`` uses;
      this follows Cui et al.'s implementation, and the weights are already normalised to sum to C).
      ``log p_t`` comes from ``log_softmax`` and ``log(1 - p_t)`` from a log-sum-exp over the other
      classes, so the loss and its gradient stay finite even when ``p_t`` rounds to 1.
    * ``"sigmoid"`` (multi-label, Lin et al.'s sigmoid focal loss): per element
      ``-w_c [y (1 - p)^gamma log p + (1 - y) p^gamma log(1 - p)]`` with ``p = sigmoid(logit)``, using
      ``logsigmoid`` for ``log p`` / ``log(1 - p)`` and ``exp(gamma * logsigmoid)`` for the modulating
      factors. ``target (N, C)`` is float with 0/1 (soft values in [0, 1] also work) and NaN for
      "unknown": unknown elements contribute nothing to the loss or its gradient, and the result is the
      **mean over the known elements**. If no element is known the result is a 0 that still has a
      ``grad_fn`` (its gradient is zero).

    With ``gamma = 0`` and ``beta = 0`` the loss is exactly plain cross-entropy (``softmax`` mode,
    ``F.cross_entropy``) or plain binary cross-entropy with logits (``sigmoid`` mode,
    ``F.binary_cross_entropy_with_logits``, averaged over the known elements).

    Label smoothing (``label_smoothing = e``, ``train.loss.label_smoothing``) replaces the one-hot target by
    ``q = (1 - e) onehot(y) + e / C`` and sums the focal term over the classes:
    ``loss = -w_y sum_c q_c (1 - p_c)^gamma log(p_c)`` (softmax mode), so with ``gamma = beta = 0`` it is
    ``F.cross_entropy(label_smoothing=e)``; in sigmoid mode the known labels become ``y (1 - e) + e / 2``.
    ``e = 0`` computes exactly the unsmoothed loss above.

    Computation is in fp32: inputs are cast to float and autocast is disabled inside.

    Args:
        counts: training samples per class, shape (C,); see :func:`class_balanced_weights`.
        beta: Eq. (9) hyper-parameter in [0, 1); paper/Cui et al. default 0.9999.
        gamma: focusing parameter of Eq. (8), >= 0.
        mode: ``"softmax"`` or ``"sigmoid"``.
        label_smoothing: ``e`` in [0, 1).
    """

    weights: Tensor

    def __init__(
        self,
        counts: Sequence[int] | Tensor,
        beta: float = 0.9999,
        gamma: float = 2.0,
        mode: FocalMode = "softmax",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if mode not in ("softmax", "sigmoid"):
            raise ValueError(f"mode must be 'softmax' or 'sigmoid'; got {mode!r}")
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0; got {gamma}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1); got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)
        self.beta = float(beta)
        self.gamma = float(gamma)
        self.mode: FocalMode = mode
        self.register_buffer("weights", class_balanced_weights(counts, beta))

    @property
    def num_classes(self) -> int:
        return int(self.weights.numel())

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, beta={self.beta}, gamma={self.gamma}, mode={self.mode!r}, "
                f"label_smoothing={self.label_smoothing}")

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """Class-balanced focal loss of Eq. (9).

        Args:
            logits: raw scores, shape (N, C).
            target: ``"softmax"`` mode: class indices, shape (N,), int64 in [0, C).
                ``"sigmoid"`` mode: labels, shape (N, C), float, 0/1 or NaN for unknown.

        Returns:
            Scalar fp32 tensor.
        """
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must have shape (N, {self.num_classes}); got {tuple(logits.shape)}")
        with torch.autocast(device_type=logits.device.type, enabled=False):
            if self.mode == "softmax":
                return self._softmax_loss(logits.float(), target)
            return self._sigmoid_loss(logits.float(), target)

    def _softmax_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """Eq. (9) in softmax mode: mean over the batch of ``-w_y (1 - p_t)^gamma log p_t``.

        ``target`` must be (N,) integer class indices (ValueError for another shape, TypeError for float or bool).
        """
        if target.ndim != 1 or target.shape[0] != logits.shape[0]:
            raise ValueError(f"target must have shape ({logits.shape[0]},); got {tuple(target.shape)}")
        if target.dtype.is_floating_point or target.dtype == torch.bool:
            raise TypeError(f"softmax-mode target must hold integer class indices; got {target.dtype}")
        target = target.long()
        logp = F.log_softmax(logits, dim=1)
        if self.label_smoothing > 0:
            return self._smoothed_softmax_loss(logp, target)
        index = target.unsqueeze(1)
        logp_t = logp.gather(1, index).squeeze(1)
        loss = -logp_t
        if self.gamma != 0.0:
            # log(1 - p_t) = logsumexp of the other classes' log-probabilities: exact and finite even
            # when p_t == 1 in floating point (where 1 - exp(logp_t) would be 0 and its log -inf).
            others = logp.scatter(1, index, torch.finfo(logp.dtype).min)
            log1m_pt = torch.logsumexp(others, dim=1)
            loss = torch.exp(self.gamma * log1m_pt) * loss
        loss = self.weights[target] * loss
        return loss.mean()

    def _smoothed_softmax_loss(self, logp: Tensor, target: Tensor) -> Tensor:
        """``-w_y sum_c q_c (1 - p_c)^gamma log p_c`` with the smoothed target ``q``."""
        n, c = logp.shape
        e = self.label_smoothing
        q = torch.full_like(logp, e / c).scatter_(1, target.unsqueeze(1), 1 - e + e / c)
        terms = -logp
        if self.gamma != 0.0:
            # log(1 - p_c) for every class c: logsumexp over the other classes (exact when p_c rounds to 1)
            eye = torch.eye(c, dtype=torch.bool, device=logp.device)
            others = logp.unsqueeze(1).expand(n, c, c).masked_fill(eye, torch.finfo(logp.dtype).min)
            terms = torch.exp(self.gamma * torch.logsumexp(others, dim=2)) * terms
        return (self.weights[target] * (q * terms).sum(1)).mean()

    def _sigmoid_loss(self, logits: Tensor, target: Tensor) -> Tensor:
        """Eq. (9) in sigmoid mode (per element, Lin et al.'s form), averaged over the known elements.

        ``target`` (N, C) float, NaN = unknown (masked out); ValueError when its shape is not that of ``logits``.
        """
        if target.shape != logits.shape:
            raise ValueError(f"target must have shape {tuple(logits.shape)}; got {tuple(target.shape)}")
        target = target.float()
        known = ~torch.isnan(target)
        y = torch.where(known, target, torch.zeros_like(target))
        if self.label_smoothing > 0:
            y = y * (1 - self.label_smoothing) + self.label_smoothing / 2
        log_p = F.logsigmoid(logits)
        log_1mp = F.logsigmoid(-logits)
        pos = y * log_p
        neg = (1.0 - y) * log_1mp
        if self.gamma != 0.0:
            pos = torch.exp(self.gamma * log_1mp) * pos
            neg = torch.exp(self.gamma * log_p) * neg
        elem = -(pos + neg) * self.weights.unsqueeze(0)
        elem = torch.where(known, elem, torch.zeros_like(elem))
        n_known = known.sum().clamp_min(1)
        return elem.sum() / n_known
