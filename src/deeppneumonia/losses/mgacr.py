"""Losses of Mask-guided Attention with Contrastive Regulation (MGACR), paper Eqs. (2)-(6).

Eq. (2)  ``L_att+ = MSE(map+, mask+) / MSE(map+, mask-)``
Eq. (3)  ``L_att- = MSE(map-, mask-)``
Eq. (4)  ``L_att_cr = L_att+ + L_att-``
Eq. (5)  ``L_feat_cr = L1(feats, feats * map+) / L1(feats, feats * map-)``
Eq. (6)  ``L_mgacr = L_att_cr + L_feat_cr``

``mask+`` is 1 inside the doctors' lesion boxes and 0 elsewhere, ``mask- = 1 - mask+``; ``map+`` and
``map-`` are the two spatial attention maps (values in [0, 1]) computed on a backbone layer's features.

Choices documented here (the paper does not specify them):

* **Per-sample ratios.** MSE / L1 are means over the spatial (and channel) positions of *one* image;
  the ratios of Eqs. (2) and (5) are formed per image and then averaged over the batch
  (``reduction="sample"``, the default), so one image with a tiny denominator cannot dominate the batch
  terms of all others. ``reduction="batch"`` forms the ratio of the batch means instead.
* **eps** is added to the denominators of Eqs. (2) and (5) so the ratios stay finite when e.g.
  ``map+ == mask-`` exactly or ``map- == 1`` everywhere. With an all-zero ``mask+`` (image without a
  box) Eq. (2) is ``MSE(map+, 0) / MSE(map+, 1)``, which is well defined.
* Everything is computed in fp32 with autocast disabled, so bf16/fp16 autocast inputs give fp32 losses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MGACRLoss", "attention_losses", "feature_contrastive_loss"]

Reduction = Literal["sample", "batch"]
NoBoxPolicy = Literal["zero_mask", "skip"]


def _check_reduction(reduction: str) -> None:
    if reduction not in ("sample", "batch"):
        raise ValueError(f"reduction must be 'sample' or 'batch'; got {reduction!r}")


def _check_map(name: str, t: Tensor, ref_shape: torch.Size) -> None:
    if t.ndim != 4 or t.shape[1] != 1:
        raise ValueError(f"{name} must have shape (N, 1, H, W); got {tuple(t.shape)}")
    if t.shape != ref_shape:
        raise ValueError(f"{name} must have shape {tuple(ref_shape)}; got {tuple(t.shape)}")


def _weighted_mean(values: Tensor, keep: Tensor | None) -> Tensor:
    """Mean of ``values`` (N,) over the kept samples; 0 (with grad_fn) when none is kept."""
    if keep is None:
        if values.numel() == 0:
            return values.sum()
        return values.mean()
    kept = torch.where(keep, values, torch.zeros_like(values))
    return kept.sum() / keep.sum().clamp_min(1)


def _ratio(num: Tensor, den: Tensor, eps: float, reduction: str, keep: Tensor | None) -> Tensor:
    """Reduce per-sample numerators/denominators (N,) to ``num / (den + eps)`` (per sample or batch)."""
    if reduction == "sample":
        return _weighted_mean(num / (den + eps), keep)
    return _weighted_mean(num, keep) / (_weighted_mean(den, keep) + eps)


def _attention_terms(map_pos: Tensor, map_neg: Tensor, mask_pos: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample MSE(map+, mask+), MSE(map+, mask-), MSE(map-, mask-), each (N,), in fp32."""
    map_pos = map_pos.float()
    map_neg = map_neg.float()
    mask_pos = mask_pos.float()
    mask_neg = 1.0 - mask_pos
    dims = (1, 2, 3)
    mse_pos_pos = (map_pos - mask_pos).square().mean(dim=dims)
    mse_pos_neg = (map_pos - mask_neg).square().mean(dim=dims)
    mse_neg_neg = (map_neg - mask_neg).square().mean(dim=dims)
    return mse_pos_pos, mse_pos_neg, mse_neg_neg


def _feature_terms(feats: Tensor, map_pos: Tensor, map_neg: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample L1(f, f * map+) and L1(f, f * map-), each (N,), in fp32."""
    feats = feats.float()
    dims = (1, 2, 3)
    l1_pos = (feats - feats * map_pos.float()).abs().mean(dim=dims)
    l1_neg = (feats - feats * map_neg.float()).abs().mean(dim=dims)
    return l1_pos, l1_neg


def attention_losses(
    map_pos: Tensor,
    map_neg: Tensor,
    mask_pos: Tensor,
    eps: float = 1e-6,
    reduction: Reduction = "sample",
) -> tuple[Tensor, Tensor]:
    """Mask-guided hard-attention losses with contrastive regulation, paper Eqs. (2) and (3).

    ``L_att+ = MSE(map+, mask+) / (MSE(map+, mask-) + eps)`` (Eq. 2) and ``L_att- = MSE(map-, mask-)``
    (Eq. 3), with ``mask- = 1 - mask+``. MSE is the mean over the H x W positions of one image. With
    ``reduction="sample"`` (default) the Eq. (2) ratio is taken per image and then averaged over the
    batch, so one image cannot dominate; ``"batch"`` takes the ratio of the batch-mean MSEs. ``L_att-``
    is the same under both reductions. Their sum is ``L_att_cr`` of Eq. (4).

    Args:
        map_pos: positive attention map ``map+``, shape (N, 1, H, W), values in [0, 1].
        map_neg: negative attention map ``map-``, shape (N, 1, H, W), values in [0, 1].
        mask_pos: lesion mask ``mask+``, shape (N, 1, H, W), values in [0, 1] (soft at box edges when
            resized), at the same resolution as the maps.
        eps: added to the Eq. (2) denominator; keeps it finite when ``map+ == mask-``.
        reduction: ``"sample"`` or ``"batch"``.

    Returns:
        ``(L_att+, L_att-)``, two scalar fp32 tensors. An empty batch gives zeros with ``grad_fn``.
    """
    _check_reduction(reduction)
    _check_map("map_pos", map_pos, map_pos.shape)
    _check_map("map_neg", map_neg, map_pos.shape)
    _check_map("mask_pos", mask_pos, map_pos.shape)
    with torch.autocast(device_type=map_pos.device.type, enabled=False):
        num, den, neg = _attention_terms(map_pos, map_neg, mask_pos)
        return _ratio(num, den, eps, reduction, None), _weighted_mean(neg, None)


def feature_contrastive_loss(
    feats: Tensor,
    map_pos: Tensor,
    map_neg: Tensor,
    eps: float = 1e-6,
    reduction: Reduction = "sample",
) -> Tensor:
    """Feature learning with contrastive regulation, paper Eq. (5).

    ``L_feat_cr = L1(f, f * map+) / (L1(f, f * map-) + eps)``, where L1 is the mean absolute
    difference over the C x H x W elements of one image and the maps broadcast over the channels.
    With ``reduction="sample"`` (default) the ratio is taken per image and averaged over the batch;
    ``"batch"`` takes the ratio of the batch means.

    Args:
        feats: features of one backbone layer, shape (N, C, H, W).
        map_pos: positive attention map, shape (N, 1, H, W).
        map_neg: negative attention map, shape (N, 1, H, W).
        eps: added to the denominator (it is 0 when ``map- == 1`` everywhere or the features are 0).
        reduction: ``"sample"`` or ``"batch"``.

    Returns:
        Scalar fp32 tensor. An empty batch gives 0 with ``grad_fn``.
    """
    _check_reduction(reduction)
    if feats.ndim != 4:
        raise ValueError(f"feats must have shape (N, C, H, W); got {tuple(feats.shape)}")
    map_shape = torch.Size((feats.shape[0], 1, feats.shape[2], feats.shape[3]))
    _check_map("map_pos", map_pos, map_shape)
    _check_map("map_neg", map_neg, map_shape)
    with torch.autocast(device_type=feats.device.type, enabled=False):
        num, den = _feature_terms(feats, map_pos, map_neg)
        return _ratio(num, den, eps, reduction, None)


class MGACRLoss(nn.Module):
    """MGACR losses over several backbone layers, paper Eqs. (2)-(6).

    For every layer ``l`` the input-resolution lesion mask is resized to the layer's (H_l, W_l) with
    ``F.interpolate(mode="area")``: each cell gets the fraction of its input pixels that lie inside a
    box, so cells cut by a box edge hold soft values in (0, 1) instead of a hard 0/1 decision (exact
    fractions when the input size is a multiple of the layer size, adaptive-pooling windows otherwise).
    Then Eqs. (2), (3) and (5) are evaluated as in :func:`attention_losses` and
    :func:`feature_contrastive_loss` and each term is averaged over the layers.

    The caller forms Eq. (4) ``att_pos + att_neg`` and Eq. (6) ``att_pos + att_neg + feat`` (with
    whatever loss weights it uses).

    Images without a lesion box (``has_box`` False) are handled by ``no_box``:

    * ``"zero_mask"`` (default): they are kept, with ``mask+ = 0`` everywhere (enforced, whatever
      ``mask_pos`` holds for them); Eq. (2) is then ``MSE(map+, 0) / MSE(map+, 1)`` and Eq. (3) pulls
      ``map-`` to 1. This teaches "no lesion, no positive attention".
    * ``"skip"``: they are excluded from the attention and feature terms (the per-sample mean is taken
      over the images with a box). If no image has a box the terms are 0 with a ``grad_fn``.

    Args:
        eps: added to the denominators of Eqs. (2) and (5); must be > 0.
        reduction: ``"sample"`` (per-image ratios, default) or ``"batch"``; see the module docstring.
    """

    def __init__(self, eps: float = 1e-6, reduction: Reduction = "sample") -> None:
        super().__init__()
        _check_reduction(reduction)
        if not eps > 0:
            raise ValueError(f"eps must be > 0; got {eps}")
        self.eps = float(eps)
        self.reduction: Reduction = reduction

    def extra_repr(self) -> str:
        return f"eps={self.eps}, reduction={self.reduction!r}"

    def forward(
        self,
        feats: Sequence[Tensor],
        maps_pos: Sequence[Tensor],
        maps_neg: Sequence[Tensor],
        mask_pos: Tensor,
        has_box: Tensor,
        use_attention: bool = True,
        use_feature: bool = True,
        no_box: NoBoxPolicy = "zero_mask",
    ) -> dict[str, Tensor]:
        """MGACR terms averaged over the layers.

        Args:
            feats: per-layer features, each (N, C_l, H_l, W_l).
            maps_pos: per-layer positive attention maps ``map+``, each (N, 1, H_l, W_l) in [0, 1].
            maps_neg: per-layer negative attention maps ``map-``, each (N, 1, H_l, W_l) in [0, 1].
            mask_pos: lesion mask ``mask+`` at input resolution, (N, 1, H0, W0), 1 inside boxes.
            has_box: (N,) bool, whether the image has at least one lesion box.
            use_attention: compute Eqs. (2)-(3) (mask-guided hard attention); zeros otherwise.
            use_feature: compute Eq. (5) (feature contrastive regulation); zero otherwise.
            no_box: ``"zero_mask"`` or ``"skip"``; see the class docstring.

        Returns:
            ``{"att_pos": L_att+ (Eq. 2), "att_neg": L_att- (Eq. 3), "feat": L_feat_cr (Eq. 5)}``, scalar
            fp32 tensors. A switched-off term is a plain 0 tensor without ``grad_fn``.
        """
        if no_box not in ("zero_mask", "skip"):
            raise ValueError(f"no_box must be 'zero_mask' or 'skip'; got {no_box!r}")
        zero = torch.zeros((), dtype=torch.float32, device=mask_pos.device)
        out = {"att_pos": zero, "att_neg": zero.clone(), "feat": zero.clone()}
        if not (use_attention or use_feature):
            return out
        if not (len(feats) == len(maps_pos) == len(maps_neg)) or len(feats) == 0:
            raise ValueError(
                "feats, maps_pos and maps_neg must be non-empty lists of the same length; got lengths "
                f"{len(feats)}, {len(maps_pos)}, {len(maps_neg)}"
            )
        if mask_pos.ndim != 4 or mask_pos.shape[1] != 1:
            raise ValueError(f"mask_pos must have shape (N, 1, H0, W0); got {tuple(mask_pos.shape)}")
        n = mask_pos.shape[0]
        if has_box.shape != (n,):
            raise ValueError(f"has_box must have shape ({n},); got {tuple(has_box.shape)}")

        with torch.autocast(device_type=mask_pos.device.type, enabled=False):
            has_box_b = has_box.to(device=mask_pos.device, dtype=torch.bool)
            mask = mask_pos.float()
            keep: Tensor | None = None
            if no_box == "zero_mask":
                mask = torch.where(has_box_b.view(n, 1, 1, 1), mask, torch.zeros_like(mask))
            else:
                keep = has_box_b

            att_pos: list[Tensor] = []
            att_neg: list[Tensor] = []
            feat: list[Tensor] = []
            for layer, (f, m_pos, m_neg) in enumerate(zip(feats, maps_pos, maps_neg, strict=True)):
                if f.ndim != 4 or f.shape[0] != n:
                    raise ValueError(f"feats[{layer}] must have shape ({n}, C, H, W); got {tuple(f.shape)}")
                map_shape = torch.Size((n, 1, f.shape[2], f.shape[3]))
                _check_map(f"maps_pos[{layer}]", m_pos, map_shape)
                _check_map(f"maps_neg[{layer}]", m_neg, map_shape)
                if use_attention:
                    mask_l = F.interpolate(mask, size=(f.shape[2], f.shape[3]), mode="area")
                    num, den, neg = _attention_terms(m_pos, m_neg, mask_l)
                    att_pos.append(_ratio(num, den, self.eps, self.reduction, keep))
                    att_neg.append(_weighted_mean(neg, keep))
                if use_feature:
                    l1_pos, l1_neg = _feature_terms(f, m_pos, m_neg)
                    feat.append(_ratio(l1_pos, l1_neg, self.eps, self.reduction, keep))

            if use_attention:
                out["att_pos"] = torch.stack(att_pos).mean()
                out["att_neg"] = torch.stack(att_neg).mean()
            if use_feature:
                out["feat"] = torch.stack(feat).mean()
        return out
