"""Where the model looked: class activation maps (Grad-CAM and its relatives), and overlays with boxes drawn.

Two ways to a heatmap, one result:

* **Exact CAM from the forward pass** (:func:`fast_cam_applies`, :func:`cam_from_features`): for the default
  classifier, ``logits = fc(GAP(layer4))`` with one linear layer, the gradient of logit ``c`` with respect to
  the ``layer4`` activations is ``W_c / (h w)`` at every position, so Grad-CAM (and HiResCAM) at ``layer4`` is
  ``ReLU(sum_k W_ck A_k) / (h w)``: the class activation map of Zhou et al. (2016), which the forward pass already
  holds. No backward pass, no hooks; normalised exactly as pytorch-grad-cam normalises (min-max, bilinear
  upsampling, min-max), so the two agree to float precision (``tests/inference/test_explain.py``).
* **pytorch-grad-cam** for every other layer and method (``gradcam++``, ``eigencam``, ``layercam``, ...).
  It switches the model to eval and registers hooks; :func:`gradcam` restores the model's previous train/eval
  mode and releases the hooks (the library's context manager) whatever happens.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor, nn

from deeppneumonia.data.manifest import Box

METHODS = ("gradcam", "gradcam++", "hirescam", "eigencam", "layercam")
"""CAM methods offered by ``--method`` (pytorch-grad-cam's classes; ``gradcam`` / ``hirescam`` at ``layer4``
of a plain classifier are computed from the forward pass instead)."""
_EXACT_METHODS = ("gradcam", "hirescam")  # for GAP + linear both reduce to ReLU(CAM)


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """A sub-module by dotted name, e.g. ``layer4`` or ``layer3.1.conv2``."""
    try:
        return model.get_submodule(name)
    except AttributeError as exc:
        names = [n for n, _ in model.named_children()]
        raise ValueError(f"no layer {name!r} in the model; top-level layers: {names}") from exc


def check_method(method: str) -> str:
    """``method`` if it is one of :data:`METHODS` (ValueError with the choices otherwise)."""
    if method not in METHODS:
        raise ValueError(f"unknown CAM method {method!r}; choose from {', '.join(METHODS)}")
    return method


def fast_cam_applies(model: nn.Module, layer: str = "layer4", method: str = "gradcam") -> bool:
    """Whether the heatmap is the exact CAM of the forward pass: a plain ResNet classifier (``layer4`` is the map
    the head globally pools, then one ``nn.Linear``), at ``layer4``, with Grad-CAM or HiResCAM."""
    from deeppneumonia.models.resnet import XRayResNet

    return (type(model) is XRayResNet and isinstance(getattr(model, "fc", None), nn.Linear) and layer == "layer4"
            and method in _EXACT_METHODS)


def _minmax(maps: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's ``scale_cam_image``: per map ``(m - min) / (1e-7 + max(m - min))``."""
    flat = maps.reshape(len(maps), -1)
    shifted = maps - flat.min(1)[:, None, None]
    return shifted / (1e-7 + shifted.reshape(len(maps), -1).max(1)[:, None, None])  # type: ignore[no-any-return]


@functools.lru_cache(maxsize=16)
def _bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of bilinear resampling with half-pixel centres (PyTorch ``align_corners=False``,
    OpenCV ``INTER_LINEAR`` when enlarging)."""
    a = np.zeros((n_out, n_in), np.float32)
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = (src - i0).astype(np.float32)
    np.add.at(a, (np.arange(n_out), i0), 1 - lam)
    np.add.at(a, (np.arange(n_out), i1), lam)
    return a


def cam_from_features_np(features: np.ndarray, fc_weight: np.ndarray, class_index: Sequence[int],
                         size: tuple[int, int]) -> np.ndarray:
    """Grad-CAM at the pooled map from the forward pass: ReLU(features x fc weights), normalised, upsampled.

    Plain NumPy on purpose: these are a few small operations, and on a loaded CPU PyTorch's intra-op threads cost
    more to synchronise than the work itself (65 ms against 5 ms single-threaded at batch 16).

    Args:
        features: (B, K, h, w) activations that the head globally pools (``layer4``).
        fc_weight: (C, K) weights of the linear head.
        class_index: one class per image.
        size: (H, W) of the network input.

    Returns:
        (B, H, W) float32 heatmaps in [0, 1], equal to pytorch-grad-cam's ``GradCAM`` at that layer.
    """
    feats = np.asarray(features, np.float32)
    w = np.asarray(fc_weight, np.float32)[np.asarray(list(class_index), dtype=np.int64)]  # (B, K)
    b, k, h, wd = feats.shape
    maps = np.matmul(w[:, None, :], feats.reshape(b, k, h * wd))[:, 0].reshape(b, h, wd)
    maps = _minmax(np.maximum(maps, 0))
    up = _bilinear_matrix(h, size[0]) @ maps @ _bilinear_matrix(wd, size[1]).T
    return _minmax(np.maximum(up, 0)).astype(np.float32)


def cam_from_features(features: Tensor, fc_weight: Tensor, class_index: Sequence[int],
                      size: tuple[int, int]) -> np.ndarray:
    """:func:`cam_from_features_np` for tensors (the PyTorch path)."""
    return cam_from_features_np(features.detach().float().cpu().numpy(), fc_weight.detach().float().cpu().numpy(),
                                class_index, size)


def _cam_class(method: str) -> Any:
    """The pytorch-grad-cam class of ``method`` (checked against :data:`METHODS`)."""
    import pytorch_grad_cam as pgc

    return {"gradcam": pgc.GradCAM, "gradcam++": pgc.GradCAMPlusPlus, "hirescam": pgc.HiResCAM,
            "eigencam": pgc.EigenCAM, "layercam": pgc.LayerCAM}[check_method(method)]


def library_cam(model: nn.Module, x: Tensor, class_index: int | Sequence[int], layer: str = "layer4",
                method: str = "gradcam") -> np.ndarray:
    """The heatmaps of pytorch-grad-cam's ``method`` (forward + backward with hooks), (B, H, W) in [0, 1]."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam_cls = _cam_class(method)
    idx = [class_index] * len(x) if isinstance(class_index, int) else list(class_index)
    was_training = model.training
    try:
        with cam_cls(model=model, target_layers=[resolve_layer(model, layer)]) as cam, torch.enable_grad():
            maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(i) for i in idx])
    finally:
        model.train(was_training)
    return np.asarray(maps, dtype=np.float32)


def gradcam(model: nn.Module, x: Tensor, class_index: int | Sequence[int], layer: str = "layer4",
            method: str = "gradcam") -> np.ndarray:
    """Class activation heatmaps in [0, 1] at the input's resolution.

    At ``layer4`` of a plain classifier with ``gradcam`` / ``hirescam`` the map comes from one forward pass
    (:func:`cam_from_features`, exact); otherwise pytorch-grad-cam computes it (:func:`library_cam`).

    Args:
        model: a classifier ``forward(x) -> logits``.
        x: (B, 1, H, W) normalised input.
        class_index: the class to explain, one for all images or one per image.
        layer: the layer whose activations are weighted.
        method: one of :data:`METHODS`.

    Returns:
        (B, H, W) float32 heatmaps.
    """
    check_method(method)
    if not fast_cam_applies(model, layer, method):
        return library_cam(model, x, class_index, layer, method)
    idx = [class_index] * len(x) if isinstance(class_index, int) else list(class_index)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            feats = model.forward_features(x)  # type: ignore[operator]
    finally:
        model.train(was_training)
    fc: nn.Linear = model.fc  # type: ignore[assignment]
    return cam_from_features(feats, fc.weight.detach(), idx, (x.shape[-2], x.shape[-1]))


def _colormap(heat: np.ndarray) -> np.ndarray:
    """(H, W) heat in [0, 1] -> (H, W, 3) uint8 RGB through matplotlib's ``jet`` colormap."""
    import matplotlib

    return (matplotlib.colormaps["jet"](np.clip(heat, 0, 1))[..., :3] * 255).astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray | None, boxes: Sequence[Box] = (), alpha: float = 0.4,
            pred_boxes: Sequence[Box] = (), caption: str | None = None, min_size: int = 256) -> Image.Image:
    """RGB picture: the grey radiograph with the heatmap blended over it, ground-truth boxes in green and
    predicted boxes in yellow; a caption goes in a band above the image, never over it.

    ``image`` (H, W) in [0, 1] or uint8, ``heat`` (H', W') in [0, 1] (resized to the image), boxes in the
    image's pixels. Images smaller than ``min_size`` are enlarged so that boxes and text stay legible.
    """
    grey = image if image.dtype == np.uint8 else (np.clip(image, 0, 1) * 255).astype(np.uint8)
    scale = max(1, -(-min_size // max(grey.shape)))
    if scale > 1:
        grey = np.asarray(Image.fromarray(grey).resize((grey.shape[1] * scale, grey.shape[0] * scale),
                                                       Image.Resampling.BILINEAR))
    rgb: np.ndarray = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    if heat is not None:
        if heat.shape != grey.shape:
            heat = np.asarray(Image.fromarray(heat.astype(np.float32), "F").resize(grey.shape[::-1],
                                                                                Image.Resampling.BILINEAR))
        rgb = (1 - alpha) * rgb + alpha * _colormap(heat)
    pic = Image.fromarray(rgb.clip(0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(pic)
    width = max(1, grey.shape[0] // 128)
    for b in boxes:
        draw.rectangle([b.x * scale, b.y * scale, b.x2 * scale, b.y2 * scale], outline=(0, 255, 0), width=width)
    for b in pred_boxes:
        draw.rectangle([b.x * scale, b.y * scale, b.x2 * scale, b.y2 * scale], outline=(255, 230, 0), width=width)
    if caption:
        band = 16
        framed = Image.new("RGB", (pic.width, pic.height + band), (0, 0, 0))
        framed.paste(pic, (0, band))
        ImageDraw.Draw(framed).text((3, 2), caption, fill=(255, 255, 255))
        pic = framed
    return pic
