"""Class activation maps computed inside the network (no hooks), for attention mining and for scoring.

For a classifier ``logits = fc(GAP(A))`` with ``A`` the pooled map (``layer4`` of a plain ResNet, the
aggregated map of an MSA ResNet), the class activation map of Zhou et al. (2016) is

    CAM_c(h, w) = sum_k W_ck A_k(h, w)          so that  logits_c = mean_{h,w} CAM_c + b_c.

Grad-CAM (Selvaraju et al. 2017) at the same map weights ``A_k`` by the spatial mean of d logit_c / d A_k,
which for this head is ``W_ck / (h w)``: Grad-CAM there equals ReLU(CAM) / (h w). :func:`gradcam_maps`
computes it with autograd all the same (it stays right for any head); the scoring of baselines uses
pytorch-grad-cam at ``layer4`` (``explain.gradcam``), which for a plain ResNet18 is the same map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def cam_features(model: nn.Module, x: Tensor) -> Tensor:
    """The map that the classifier globally pools, (B, K, h, w): the network's ``forward_features``."""
    return model.forward_features(x)  # type: ignore[operator, no-any-return]


def _fc(model: nn.Module) -> nn.Linear:
    """The classifier's linear ``fc`` layer; ValueError when the model has none (CAM needs GAP + linear)."""
    fc = getattr(model, "fc", None)
    if not isinstance(fc, nn.Linear):
        raise ValueError("CAM needs a classifier that ends in global average pooling + a linear `fc` (a ResNet)")
    return fc


def class_activation_maps(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """CAMs of every class (B, C, h, w) (no bias, any sign) and the logits (B, C) of the same forward pass."""
    a = cam_features(model, x)
    fc = _fc(model)
    maps = torch.einsum("ck,bkhw->bchw", fc.weight.to(a.dtype), a)
    logits = fc(torch.flatten(F.adaptive_avg_pool2d(a, 1), 1))
    return maps, logits


def gradcam_maps(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Grad-CAM of every class at the pooled map (B, C, h, w) (before ReLU), and the logits (B, C).

    Leaves no gradients in the model's parameters (``torch.autograd.grad`` on the activations only).
    """
    with torch.enable_grad():
        a = cam_features(model, x).detach().requires_grad_(True)
        fc = _fc(model)
        logits = fc(torch.flatten(F.adaptive_avg_pool2d(a, 1), 1))
        maps = []
        for c in range(logits.shape[1]):
            (g,) = torch.autograd.grad(logits[:, c].sum(), a, retain_graph=c < logits.shape[1] - 1)
            maps.append((g.mean((2, 3), keepdim=True) * a).sum(1))
    return torch.stack(maps, 1).detach(), logits.detach()


def class_maps(model: nn.Module, x: Tensor, method: str = "cam") -> tuple[Tensor, Tensor]:
    """``cam`` or ``gradcam`` maps of every class (B, C, h, w) and the logits (B, C)."""
    if method == "cam":
        return class_activation_maps(model, x)
    if method == "gradcam":
        return gradcam_maps(model, x)
    raise ValueError(f"unknown heatmap method {method!r}; choose cam or gradcam")


def normalized_maps(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """ReLU, bilinear upsampling to ``size``, division by each map's maximum: (B, C, H, W) in [0, 1].

    A map with no positive value becomes all zeros (no evidence anywhere).
    """
    up = F.interpolate(maps.float().clamp_min(0), size=size, mode="bilinear", align_corners=False)
    peak = up.flatten(2).amax(2)[..., None, None]
    return torch.where(peak > 0, up / peak.clamp_min(1e-12), torch.zeros_like(up))


def salient_mask(maps: Tensor, select: Tensor, threshold: float, size: tuple[int, int]) -> Tensor:
    """Union over the selected classes of the most salient region, ``map >= threshold * max(map)``.

    Args:
        maps: (B, C, h, w) class maps (any sign; ReLU first).
        select: (B, C) bool, the classes whose salient region counts (the image's positive labels).
        threshold: in (0, 1]; a pixel is salient when its normalised value is >= threshold.
        size: (H, W) of the image the mask is for.

    Returns:
        (B, 1, H, W) bool. Empty for an image with no selected class or whose selected maps have no positive value.
    """
    norm = normalized_maps(maps, size)
    hit = (norm >= threshold) & (norm > 0) & select[:, :, None, None].to(norm.device)
    return hit.any(1, keepdim=True)
