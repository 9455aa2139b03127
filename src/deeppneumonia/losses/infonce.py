"""InfoNCE / NT-Xent contrastive loss of the self-supervised pre-training stage (paper Eq. 1).

The paper (Sec. III-B) uses the SimCLR loss with temperature ``tau = 0.2``:

.. math::

    \\mathcal{L}_{i,j} = -\\log \\frac{\\exp(\\mathrm{sim}(z_i, z_j)/\\tau)}
        {\\sum_{k=1}^{2N} [k \\neq i] \\exp(\\mathrm{sim}(z_i, z_k)/\\tau)}

The printed Eq. (1) writes the indicator as ``[k != j]``; that is a typo for SimCLR's ``[k != i]``
(with ``[k != j]`` the positive would be dropped from the denominator and the self-similarity
``sim(z_i, z_i) = 1`` kept, which is not the loss of the cited reference [25]). This module implements
``[k != i]``: each of the 2N anchors has one positive (the other view of the same image) and 2N - 2
negatives (both views of every other image).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["InfoNCELoss", "contrastive_accuracy"]

# Added to the self-similarity logits so that exp() of them is exactly 0 in fp32, while staying finite
# (no inf - inf in the backward pass). Logits of unit vectors are bounded by 1 / tau, far below this.
_SELF_MASK_VALUE = -1.0e9


def _check_views(z1: Tensor, z2: Tensor) -> None:
    """Raise ValueError unless ``z1`` and ``z2`` are (N, D) of one shape with N, D >= 1."""
    if z1.ndim != 2 or z2.ndim != 2:
        raise ValueError(f"z1 and z2 must be 2-D (N, D); got shapes {tuple(z1.shape)} and {tuple(z2.shape)}")
    if z1.shape != z2.shape:
        raise ValueError(f"z1 and z2 must have the same shape; got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if z1.shape[0] < 1 or z1.shape[1] < 1:
        raise ValueError(f"z1 and z2 need at least one sample and one feature; got shape {tuple(z1.shape)}")


def _similarity_logits(z1: Tensor, z2: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Masked similarity logits of the 2N samples and the index of each anchor's positive (Eq. 1).

    Must be called with autocast disabled. Computes in fp32 whatever the input dtype.

    Args:
        z1: first views, shape (N, D).
        z2: second views, shape (N, D); row ``i`` is the positive of row ``i`` of ``z1``.
        temperature: tau of Eq. (1).

    Returns:
        ``(logits, targets)``: logits of shape (2N, 2N) with ``logits[i, k] = sim(z_i, z_k) / tau`` and
        the diagonal (self-similarity) set to a large negative value; targets of shape (2N,) int64 with
        ``targets[i] = i + N`` for ``i < N`` and ``i - N`` otherwise.
    """
    n = z1.shape[0]
    z = torch.cat([z1, z2], dim=0).float()
    z = F.normalize(z, dim=1)
    logits = (z @ z.t()) / temperature
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, _SELF_MASK_VALUE)
    idx = torch.arange(n, device=z.device)
    targets = torch.cat([idx + n, idx], dim=0)
    return logits, targets


class InfoNCELoss(nn.Module):
    """SimCLR NT-Xent (InfoNCE) loss, paper Eq. (1).

    The two views are concatenated into 2N samples ``z_1 .. z_2N`` and L2-normalised;
    ``sim(z_i, z_k)`` is the dot product of the normalised vectors. For each anchor ``i`` the positive
    is the other view of the same image, the 2N - 2 other samples are negatives and the anchor itself
    is excluded from the denominator (``[k != i]``; see the module docstring about the paper's
    ``[k != j]`` typo). The loss is the mean of ``L_{i,j}`` over all 2N anchors, i.e. both ``(i, j)``
    and ``(j, i)`` of every pair as in SimCLR.

    Computed as ``F.cross_entropy`` over logits whose diagonal is masked with a large negative value
    (log-sum-exp stable), always in fp32: inputs are cast to float and autocast is disabled inside, so
    bf16/fp16 autocast inputs give an fp32 loss.

    Args:
        temperature: tau of Eq. (1); the paper uses 0.2. Must be > 0.
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0; got {temperature}")
        self.temperature = float(temperature)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"

    def forward(self, z1: Tensor, z2: Tensor, anchors: Tensor | None = None) -> Tensor:
        """NT-Xent loss of Eq. (1), averaged over the 2N anchors (or over ``anchors`` only).

        Args:
            z1: projections of the first views, shape (N, D); need not be normalised.
            z2: projections of the second views, shape (N, D); row ``i`` is the positive of ``z1[i]``.
            anchors: optional row indices into the 2N samples (``z1`` rows 0..N-1, then ``z2``) whose
                terms are averaged; every sample still serves as a negative. Under DDP each rank passes the
                gathered global views and its own rows, so that the ranks' mean is the global loss.

        Returns:
            Scalar fp32 tensor. With N = 1 there are no negatives and the loss is 0.
        """
        _check_views(z1, z2)
        with torch.autocast(device_type=z1.device.type, enabled=False):
            logits, targets = _similarity_logits(z1, z2, self.temperature)
            if anchors is not None:
                logits, targets = logits[anchors], targets[anchors]
            return F.cross_entropy(logits, targets)


@torch.no_grad()
def contrastive_accuracy(z1: Tensor, z2: Tensor) -> Tensor:
    """Top-1 contrastive accuracy of the paper's Fig. 6 (positive retrieval under Eq. 1's similarity).

    Fraction of the 2N anchors whose most similar *other* sample (cosine similarity, self excluded) is
    its positive, the other view of the same image. The temperature does not change the ranking, so
    none is taken. Ties are resolved by ``argmax`` (first index). Not differentiable.

    Args:
        z1: projections of the first views, shape (N, D).
        z2: projections of the second views, shape (N, D).

    Returns:
        Scalar fp32 tensor in [0, 1].
    """
    _check_views(z1, z2)
    with torch.autocast(device_type=z1.device.type, enabled=False):
        logits, targets = _similarity_logits(z1, z2, 1.0)
        return (logits.argmax(dim=1) == targets).float().mean()
