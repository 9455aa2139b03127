"""MGACR's own localization maps: map+ of each guided layer, from heads kept for analysis (issue 18).

A Deep Pneumonia run trained with ``train.keep_attention_heads=true`` saves ``mgacr_heads.safetensors`` next to
``model.safetensors`` (the heads are never needed for inference). map+ of layer l is the attention head's
positive map on that layer's features, (B, 1, h_l, w_l) in [0, 1]; here it is upsampled bilinearly
(``align_corners=False``) to the input size, as CAM is, and scored like any heatmap. Its grid is layer l's
(e.g. 16x16 for layer 2 and 8x8 for layer 3 at 128 px).
"""

from __future__ import annotations

from collections.abc import Sequence
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


def explain_map_plus(checkpoint: str | Path, paths: Sequence[str | Path], layer: int, out: Path,
                     device: str = "auto") -> list[dict[str, Any]]:
    """Overlays of MGACR's map+ of ``layer`` for image files and folders (``deeppneumonia explain --mgacr-layer``).

    Needs the heads saved beside ``checkpoint`` (``train.keep_attention_heads=true``). One row per file, as
    ``predict`` gives: ``path``, ``p_<class>``, ``prediction``, ``error`` (a file that cannot be read is reported,
    not fatal) and ``heatmap`` (``<stem>_mapplus_layer<N>.png`` in ``out``). map+ is class-agnostic: where the
    head puts the lesion evidence; the caption names the decided class.

    Raises:
        ConfigError: the checkpoint has no heads beside it, or they do not guide ``layer``.
    """
    from deeppneumonia.errors import ConfigError
    from deeppneumonia.inference.explain import overlay
    from deeppneumonia.inference.files import _load, heatmap_names, iter_images
    from deeppneumonia.inference.predictor import Predictor

    pred = Predictor.from_checkpoint(checkpoint, device)
    found = load_mgacr_heads(checkpoint, pred.rt.device)
    if found is None:
        raise ConfigError(f"{checkpoint}: no {HEADS_FILE} beside it; map+ needs a run trained with "
                          "train.keep_attention_heads=true")
    heads, meta = found
    if layer not in list(meta["layers"]):
        raise ConfigError(f"--mgacr-layer {layer}: the heads of {checkpoint} guide layers {list(meta['layers'])}")
    out.mkdir(parents=True, exist_ok=True)
    files = list(iter_images(paths))
    names = heatmap_names(files, paths, f"_mapplus_layer{layer}.png")
    rows: list[dict[str, Any]] = []
    for f, name in zip(files, names, strict=True):
        small = _load(f, pred.pre)
        if isinstance(small, str):
            rows.append({"path": str(f), "error": small})
            continue
        x = pred.preprocess_uint8(torch.from_numpy(small)[None, None])
        probs = pred.probabilities(x)
        heat = mgacr_heatmaps(heads, pred.model, x.to(pred.rt.device), layer)[0]
        c = int(pred.explained_class(probs)[0])
        overlay(small, heat, caption=f"map+ layer{layer}; {pred.classes[c]} {probs[0, c]:.2f}").save(out / name)
        row = {"path": str(f), **{f"p_{k}": round(float(p), 5) for k, p in zip(pred.classes, probs[0], strict=True)}}
        rows.append({**row, "prediction": "|".join(pred.labels(probs)[0]), "error": "", "heatmap": str(out / name)})
    return rows
