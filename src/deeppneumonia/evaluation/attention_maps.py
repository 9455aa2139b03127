"""MGACR's own localization maps: map+ of each guided layer, from heads kept for analysis (issue 18).

A Deep Pneumonia run trained with ``train.keep_attention_heads=true`` saves ``mgacr_heads.safetensors`` next to
``model.safetensors`` (the heads are never needed for inference). map+ of layer l is the attention head's
positive map on that layer's features, (B, 1, h_l, w_l) in [0, 1]; here it is upsampled bilinearly
(``align_corners=False``) to the input size, as CAM is, and scored like any heatmap. Its grid is layer l's
(e.g. 16x16 for layer 2 and 8x8 for layer 3 at 128 px).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

HEADS_FILE = "mgacr_heads.safetensors"


def load_mgacr_heads(model_path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, dict[str, Any]] | None:
    """The MGACR heads saved next to ``model_path`` (eval mode) and their metadata; None when there are none."""
    from deeppneumonia.models.attention import MGACRHeads
    from deeppneumonia.models.checkpoint import load_weights

    path = Path(model_path).parent / HEADS_FILE
    if not path.is_file():
        return None
    state, meta = load_weights(path)
    heads = MGACRHeads(meta["layers"], int(meta.get("kernel_size", 7)), meta.get("head", "cbam"),
                       meta.get("stage_channels", (64, 128, 256, 512))).to(device)
    heads.load_state_dict(state)
    return heads.eval(), meta


@torch.no_grad()
def mgacr_heatmaps(heads: nn.Module, model: nn.Module, x: Tensor, layer: int) -> np.ndarray:
    """(B, H, W) float32 map+ of ``layer`` for the input ``x`` (B, 1, H, W), upsampled to H x W.

    map+ does not depend on a class: the head marks where the lesion evidence is for every class.
    """
    layers = list(heads.layers)  # type: ignore[arg-type]
    if layer not in layers:
        raise ValueError(f"the heads guide layers {layers}, not {layer}")
    was = model.training
    model.eval()
    try:
        _, maps_pos, _ = heads(model.forward_intermediates(x))  # type: ignore[operator]
    finally:
        model.train(was)
    mp = maps_pos[layers.index(layer)].float()
    return F.interpolate(mp, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0].cpu().numpy()
