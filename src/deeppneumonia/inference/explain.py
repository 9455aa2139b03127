"""Where the model looked: Grad-CAM through pytorch-grad-cam, and overlays with the lesion boxes drawn.

pytorch-grad-cam switches the model to eval and registers hooks; :func:`gradcam` restores the model's
previous train/eval mode and releases the hooks (the library's context manager) whatever happens.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor, nn

from deeppneumonia.data.manifest import Box


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """A sub-module by dotted name, e.g. ``layer4`` or ``layer3.1.conv2``."""
    try:
        return model.get_submodule(name)
    except AttributeError as exc:
        names = [n for n, _ in model.named_children()]
        raise ValueError(f"no layer {name!r} in the model; top-level layers: {names}") from exc


def gradcam(model: nn.Module, x: Tensor, class_index: int | Sequence[int], layer: str = "layer4") -> np.ndarray:
    """Grad-CAM heatmaps in [0, 1] at the input's resolution.

    Args:
        model: a classifier ``forward(x) -> logits``.
        x: (B, 1, H, W) normalised input.
        class_index: the class to explain, one for all images or one per image.
        layer: the layer whose activations are weighted.

    Returns:
        (B, H, W) float32 heatmaps.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    idx = [class_index] * len(x) if isinstance(class_index, int) else list(class_index)
    was_training = model.training
    try:
        with GradCAM(model=model, target_layers=[resolve_layer(model, layer)]) as cam, torch.enable_grad():
            maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(i) for i in idx])
    finally:
        model.train(was_training)
    return np.asarray(maps, dtype=np.float32)


def _colormap(heat: np.ndarray) -> np.ndarray:
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
