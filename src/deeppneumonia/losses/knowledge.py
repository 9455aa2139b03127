"""Knowledge preservation of Iterative Attention Mining (Cai et al. 2018; a reconstruction).

After each mining round the network must keep answering the *original* image as the frozen copy of the
previous round did: ``L = L_cls(f(x_k), y) + kp_weight * KP(f_{k-1}(x), f(x))`` (``training/iam.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def kp_loss(current: Tensor, frozen: Tensor, kind: str = "kl", multilabel: bool = False) -> Tensor:
    """Knowledge-preservation loss between the updated network's logits and the frozen copy's, (B, C) each.

    ``kl``: KL(p_frozen || p_current), summed over classes and averaged over images (softmax), or the mean over
    labels of the Bernoulli KL (sigmoid, multi-label). ``l2_logits``: mean squared difference of the logits.
    Zero when the two agree; the frozen side is detached, so no gradient reaches the frozen network.
    """
    frozen = frozen.detach().float()
    current = current.float()
    if kind == "l2_logits":
        return F.mse_loss(current, frozen)
    if kind != "kl":
        raise ValueError(f"unknown KP loss {kind!r}; choose kl or l2_logits")
    if multilabel:
        lp, lq = F.logsigmoid(frozen), F.logsigmoid(current)
        ln_p, ln_q = F.logsigmoid(-frozen), F.logsigmoid(-current)
        p = torch.sigmoid(frozen)
        return (p * (lp - lq) + (1 - p) * (ln_p - ln_q)).mean()
    return F.kl_div(F.log_softmax(current, 1), F.log_softmax(frozen, 1), reduction="batchmean", log_target=True)
