"""Losses of Mask-guided Attention with Contrastive Regulation (MGACR), paper Eqs. (2)-(6).

The paper's literal form (``form="paper"``)::

    Eq. (2)  L_att+    = MSE(map+, mask+) / MSE(map+, mask-)
    Eq. (3)  L_att-    = MSE(map-, mask-)
    Eq. (4)  L_att_cr  = L_att+ + L_att-
    Eq. (5)  L_feat_cr = L1(feats, feats * map+) / L1(feats, feats * map-)
    Eq. (6)  L_mgacr   = L_att_cr + L_feat_cr

``mask+`` is 1 inside the doctors' lesion boxes and 0 elsewhere, ``mask- = 1 - mask+``; ``map+`` and
``map-`` are the two spatial attention maps (values in [0, 1]) computed on a backbone layer's features.

**Why the literal Eq. (5) is ill-posed.** With the maps free, ``L_feat_cr`` is minimised by map+ = 1 and
map- = 0 everywhere, whatever the mask: on an 8 x 8 grid with uniform features and a 14-cell box it is 1.00
at maps of 0.5, 3.56 at the *correct* maps (map+ = mask+, map- = mask-, clipped to [0.001, 0.999] as a
sigmoid is) and 0.001 at the trivial maps; for an image with an all-zero mask the correct maps give 999.
Near the target of such an image (map+ = 0.1, map- = 0.9) the gradient of Eq. (5) on map- is 450 times that
of Eq. (3) and of the opposite sign, so Eq. (5) undoes what Eq. (3) teaches. ``tests/losses/test_mgacr.py``
recomputes these numbers.

The default, well-posed form (``form="robust"``) keeps the roles of the terms and changes how they are posed:

* Eq. (2) bounded: ``a / (a + b + eps)`` with ``a = MSE(map+, mask+)``, ``b = MSE(map+, mask-)``. It is a
  monotone function of the paper's ratio ``a / b`` (same minimum, map+ = mask+, value 0), lies in [0, 1]
  and its gradient stays bounded near map+ = mask- (where ``a / b`` explodes). For 0/1 masks
  ``a + b >= 0.5`` at every cell, so ``eps`` cannot dominate.
* Eq. (3) as printed.
* Eq. (5) shapes the *features*, not the maps: the maps enter detached (``feature_target="maps"``) or are
  replaced by the masks (``"masks"``), so it has no gradient on the maps and cannot pull them away from the
  masks. Bounded like Eq. (2): ``A / (A + B + eps * mean|f|)`` with ``A = L1(f, f * map+)`` (feature mass
  outside map+) and ``B = L1(f, f * map-)`` (mass outside map-). With the maps at the masks this is the share
  of the feature magnitude that lies outside the lesion boxes; it is invariant to the feature scale (the eps
  scales with ``mean|f|``, so shrinking all features is no way to lower it). It is computed on images with
  a box only: on an all-zero mask it is a constant 1 that teaches nothing.

Reductions. MSE / L1 are means over the positions (and channels) of *one* image. ``reduction="sample"``
(the default) forms each image's ratio and averages over the batch; ``"batch"`` forms the ratio of the
batch means. For the paper's unbounded ratios the per-image mean is the *fragile* choice: one image with a
small denominator (e.g. a map- close to 1 everywhere in Eq. (5), or the zero-mask image above) can blow up
the batch mean, whereas the batch ratio dilutes it among the other images' denominators. In the robust
form every per-image ratio lies in [0, 1], so no image can weigh more than 1/N of the batch.

Everything is computed in fp32 with autocast disabled, so bf16/fp16 autocast inputs give fp32 losses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MGACRLoss", "attention_losses", "feature_contrastive_loss"]

Reduction = Literal["sample", "batch"]
Form = Literal["robust", "paper"]
FeatureTarget = Literal["maps", "masks"]
NoBoxPolicy = Literal["by_class", "zero_mask", "skip"]

_TINY = 1e-18  # keeps 0 / 0 (all-zero features) at 0 in the robust Eq. (5); its square is still > 0 in fp32


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}; got {value!r}")


def _check_reduction(reduction: str) -> None:
    _check_choice("reduction", reduction, ("sample", "batch"))


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


def _ratio(num: Tensor, den: Tensor, eps: Tensor | float, reduction: str, keep: Tensor | None) -> Tensor:
    """Reduce per-sample numerators/denominators (N,) to ``num / (den + eps)`` (per sample or batch)."""
    if reduction == "sample":
        return _weighted_mean(num / (den + eps), keep)
    eps_b = _weighted_mean(eps, keep) if isinstance(eps, Tensor) else eps
    return _weighted_mean(num, keep) / (_weighted_mean(den, keep) + eps_b)


def _bounded_ratio(num: Tensor, other: Tensor, eps: Tensor | float, reduction: str, keep: Tensor | None) -> Tensor:
    """``num / (num + other + eps)`` in [0, 1] (per sample or of the batch means)."""
    return _ratio(num, num + other, eps, reduction, keep)


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


def _att_pos(num: Tensor, den: Tensor, eps: float, reduction: str, keep: Tensor | None, form: str) -> Tensor:
    """Eq. (2): ``num / (den + eps)`` (paper) or ``num / (num + den + eps)`` (robust)."""
    if form == "paper":
        return _ratio(num, den, eps, reduction, keep)
    return _bounded_ratio(num, den, eps, reduction, keep)


def _feat(feats: Tensor, target_pos: Tensor, target_neg: Tensor, eps: float, reduction: str,
          keep: Tensor | None, form: str) -> Tensor:
    """Eq. (5): the paper's ratio, or the robust bounded ratio with detached targets and a relative eps."""
    if form == "paper":
        l1_pos, l1_neg = _feature_terms(feats, target_pos, target_neg)
        return _ratio(l1_pos, l1_neg, eps, reduction, keep)
    l1_pos, l1_neg = _feature_terms(feats, target_pos.detach(), target_neg.detach())
    scale = feats.detach().float().abs().mean(dim=(1, 2, 3))  # eps relative to the feature magnitude
    return _bounded_ratio(l1_pos, l1_neg, eps * scale + _TINY, reduction, keep)


def attention_losses(
    map_pos: Tensor,
    map_neg: Tensor,
    mask_pos: Tensor,
    eps: float = 1e-6,
    reduction: Reduction = "sample",
    form: Form = "robust",
) -> tuple[Tensor, Tensor]:
    """Mask-guided hard-attention losses with contrastive regulation, paper Eqs. (2) and (3).

    ``form="paper"``: ``L_att+ = MSE(map+, mask+) / (MSE(map+, mask-) + eps)`` (Eq. 2, as printed).
    ``form="robust"`` (default): ``L_att+ = a / (a + b + eps)`` with ``a = MSE(map+, mask+)``,
    ``b = MSE(map+, mask-)``, a bounded, monotone function of the paper's ratio (same minimum at
    map+ = mask+). Both: ``L_att- = MSE(map-, mask-)`` (Eq. 3), with ``mask- = 1 - mask+``. MSE is the mean
    over the H x W positions of one image. ``reduction="sample"`` takes the Eq. (2) ratio per image and
    averages over the batch; ``"batch"`` takes the ratio of the batch means (see the module docstring for
    which is robust when). ``L_att-`` is the same under both. Their sum is ``L_att_cr`` of Eq. (4).

    Args:
        map_pos: positive attention map ``map+``, shape (N, 1, H, W), values in [0, 1].
        map_neg: negative attention map ``map-``, shape (N, 1, H, W), values in [0, 1].
        mask_pos: lesion mask ``mask+``, shape (N, 1, H, W), values in [0, 1] (soft at box edges when
            resized), at the same resolution as the maps.
        eps: added to the Eq. (2) denominator; keeps it finite when ``map+ == mask-``.
        reduction: ``"sample"`` or ``"batch"``.
        form: ``"robust"`` or ``"paper"``.

    Returns:
        ``(L_att+, L_att-)``, two scalar fp32 tensors. An empty batch gives zeros with ``grad_fn``.
    """
    _check_reduction(reduction)
    _check_choice("form", form, ("robust", "paper"))
    _check_map("map_pos", map_pos, map_pos.shape)
    _check_map("map_neg", map_neg, map_pos.shape)
    _check_map("mask_pos", mask_pos, map_pos.shape)
    with torch.autocast(device_type=map_pos.device.type, enabled=False):
        num, den, neg = _attention_terms(map_pos, map_neg, mask_pos)
        return _att_pos(num, den, eps, reduction, None, form), _weighted_mean(neg, None)


def feature_contrastive_loss(
    feats: Tensor,
    map_pos: Tensor,
    map_neg: Tensor,
    eps: float = 1e-6,
    reduction: Reduction = "sample",
    form: Form = "robust",
) -> Tensor:
    """Feature learning with contrastive regulation, paper Eq. (5).

    ``form="paper"``: ``L_feat_cr = L1(f, f * map+) / (L1(f, f * map-) + eps)``, where L1 is the mean
    absolute difference over the C x H x W elements of one image and the maps broadcast over the channels.
    ``form="robust"`` (default): ``A / (A + B + eps * mean|f|)`` with ``A = L1(f, f * sg(map+))`` and
    ``B = L1(f, f * sg(map-))``, ``sg`` = stop-gradient: it lies in [0, 1], does not change with the
    feature scale, and moves only the features (at map+ = mask+ it is the share of ``|f|`` outside the
    boxes). Pass the masks as the maps to regulate the features by the boxes directly. ``reduction`` as in
    :func:`attention_losses`.

    Args:
        feats: features of one backbone layer, shape (N, C, H, W).
        map_pos: positive attention map (or mask+), shape (N, 1, H, W).
        map_neg: negative attention map (or mask-), shape (N, 1, H, W).
        eps: added to the denominator (paper: absolute; robust: relative to ``mean|f|`` of the image).
        reduction: ``"sample"`` or ``"batch"``.
        form: ``"robust"`` or ``"paper"``.

    Returns:
        Scalar fp32 tensor. An empty batch gives 0 with ``grad_fn``.
    """
    _check_reduction(reduction)
    _check_choice("form", form, ("robust", "paper"))
    if feats.ndim != 4:
        raise ValueError(f"feats must have shape (N, C, H, W); got {tuple(feats.shape)}")
    map_shape = torch.Size((feats.shape[0], 1, feats.shape[2], feats.shape[3]))
    _check_map("map_pos", map_pos, map_shape)
    _check_map("map_neg", map_neg, map_shape)
    with torch.autocast(device_type=feats.device.type, enabled=False):
        return _feat(feats, map_pos, map_neg, eps, reduction, None, form)


def _policy(no_box: str, has_box: Tensor, negative: Tensor | None) -> tuple[Tensor, Tensor]:
    """(zero, keep), each (N,) bool: whose mask+ is forced to 0, and who takes part in the MGACR terms."""
    if no_box == "zero_mask":
        return ~has_box, torch.ones_like(has_box)
    if no_box == "skip":
        return torch.zeros_like(has_box), has_box
    if negative is None:
        raise ValueError("no_box='by_class' needs the per-image `negative` flags (images of the negative class)")
    zero = ~has_box & negative
    return zero, has_box | zero


class MGACRLoss(nn.Module):
    """MGACR losses over several backbone layers, paper Eqs. (2)-(6).

    For every layer ``l`` the input-resolution lesion mask is resized to the layer's (H_l, W_l) with
    ``F.interpolate(mode="area")``: each cell gets the fraction of its input pixels that lie inside a
    box, so cells cut by a box edge hold soft values in (0, 1) instead of a hard 0/1 decision (exact
    fractions when the input size is a multiple of the layer size, adaptive-pooling windows otherwise).
    Then Eqs. (2), (3) and (5) are evaluated as in :func:`attention_losses` and
    :func:`feature_contrastive_loss` (in the chosen ``form``) and each term is averaged over the layers.

    The caller forms Eq. (4) ``att_pos + att_neg`` and Eq. (6) ``att_pos + att_neg + feat`` (with
    whatever loss weights it uses).

    Images without a lesion box (``has_box`` False) are handled by ``no_box``:

    * ``"by_class"``: only images of the negative class (``negative`` True) get ``mask+ = 0`` ("no lesion,
      no positive attention"); positive images without a box are left out of the MGACR terms (nobody drew
      their lesion, so their mask is unknown, not empty). They still train the classifier.
    * ``"zero_mask"``: every image without a box is kept with ``mask+ = 0`` (enforced, whatever
      ``mask_pos`` holds for it); Eq. (2) is then ``MSE(map+, 0) / MSE(map+, 1)`` and Eq. (3) pulls
      ``map-`` to 1. This also teaches "no lesion" on positive images nobody boxed.
    * ``"skip"``: they are excluded from the attention and feature terms (negatives included).

    The mean over images is taken over the kept ones; if none is kept the terms are 0 with a ``grad_fn``.
    In the robust form Eq. (5) is computed on kept images *with a box* only (on a zero mask it is constant).

    Args:
        eps: added to the denominators of Eqs. (2) and (5) (relative to ``mean|f|`` in the robust Eq. 5);
            must be > 0.
        reduction: ``"sample"`` (per-image ratios, default) or ``"batch"``; see the module docstring.
        form: ``"robust"`` (default, well-posed) or ``"paper"`` (Eqs. 2-6 as printed).
        feature_target: robust form only: Eq. (5) weighs the features by the detached maps (``"maps"``,
            default) or by the masks (``"masks"``).
    """

    def __init__(self, eps: float = 1e-6, reduction: Reduction = "sample", form: Form = "robust",
                 feature_target: FeatureTarget = "maps") -> None:
        super().__init__()
        _check_reduction(reduction)
        _check_choice("form", form, ("robust", "paper"))
        _check_choice("feature_target", feature_target, ("maps", "masks"))
        if not eps > 0:
            raise ValueError(f"eps must be > 0; got {eps}")
        self.eps = float(eps)
        self.reduction: Reduction = reduction
        self.form: Form = form
        self.feature_target: FeatureTarget = feature_target

    def extra_repr(self) -> str:
        return (f"eps={self.eps}, reduction={self.reduction!r}, form={self.form!r}, "
                f"feature_target={self.feature_target!r}")

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
        negative: Tensor | None = None,
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
            no_box: ``"by_class"``, ``"zero_mask"`` or ``"skip"``; see the class docstring.
            negative: (N,) bool, whether the image belongs to the negative class; needed by ``"by_class"``.

        Returns:
            ``{"att_pos": L_att+ (Eq. 2), "att_neg": L_att- (Eq. 3), "feat": L_feat_cr (Eq. 5)}``, scalar
            fp32 tensors. A switched-off term is a plain 0 tensor without ``grad_fn``.
        """
        _check_choice("no_box", no_box, ("by_class", "zero_mask", "skip"))
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
        if negative is not None and negative.shape != (n,):
            raise ValueError(f"negative must have shape ({n},); got {tuple(negative.shape)}")

        with torch.autocast(device_type=mask_pos.device.type, enabled=False):
            has_box_b = has_box.to(device=mask_pos.device, dtype=torch.bool)
            neg_b = None if negative is None else negative.to(device=mask_pos.device, dtype=torch.bool)
            zeroed, keep = _policy(no_box, has_box_b, neg_b)
            mask = torch.where(zeroed.view(n, 1, 1, 1), torch.zeros_like(mask_pos.float()), mask_pos.float())
            keep_att: Tensor | None = None if no_box == "zero_mask" else keep  # None: today's plain mean
            keep_feat = keep_att if self.form == "paper" else keep & has_box_b

            att_pos: list[Tensor] = []
            att_neg: list[Tensor] = []
            feat: list[Tensor] = []
            for layer, (f, m_pos, m_neg) in enumerate(zip(feats, maps_pos, maps_neg, strict=True)):
                if f.ndim != 4 or f.shape[0] != n:
                    raise ValueError(f"feats[{layer}] must have shape ({n}, C, H, W); got {tuple(f.shape)}")
                map_shape = torch.Size((n, 1, f.shape[2], f.shape[3]))
                _check_map(f"maps_pos[{layer}]", m_pos, map_shape)
                _check_map(f"maps_neg[{layer}]", m_neg, map_shape)
                mask_l = F.interpolate(mask, size=(f.shape[2], f.shape[3]), mode="area")
                if use_attention:
                    num, den, neg = _attention_terms(m_pos, m_neg, mask_l)
                    att_pos.append(_att_pos(num, den, self.eps, self.reduction, keep_att, self.form))
                    att_neg.append(_weighted_mean(neg, keep_att))
                if use_feature:
                    use_masks = self.form == "robust" and self.feature_target == "masks"
                    t_pos, t_neg = (mask_l, 1.0 - mask_l) if use_masks else (m_pos, m_neg)
                    feat.append(_feat(f, t_pos, t_neg, self.eps, self.reduction, keep_feat, self.form))

            if use_attention:
                out["att_pos"] = torch.stack(att_pos).mean()
                out["att_neg"] = torch.stack(att_neg).mean()
            if use_feature:
                out["feat"] = torch.stack(feat).mean()
        return out
