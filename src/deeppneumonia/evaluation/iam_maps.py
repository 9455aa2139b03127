"""Localization maps of an IAM run: the aggregate of the class maps of every round's network.

An IAM run folder holds ``train/model.safetensors`` (the network after the last mining round, a normal
classifier checkpoint) and ``train/iam_rounds.safetensors`` (the networks of rounds 0..K-1, keys
``round{j}.<param>``). The IAM map of image x for class c is

    M(x, c) = aggregate_{j = 0..K} N(map_j(x, c))       aggregate = max (default) or mean

with ``map_j`` the CAM (or Grad-CAM) of round j's network on the *original* image and N = ReLU, bilinear
upsampling to the input size and division by the maximum (``models.cam.normalized_maps``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from deeppneumonia.errors import CheckpointError
from deeppneumonia.models.cam import class_maps, normalized_maps
from deeppneumonia.models.checkpoint import load_weights
from deeppneumonia.models.factory import build_classifier
from deeppneumonia.runtime.device import eval_mode

ROUNDS_FILE = "iam_rounds.safetensors"


def load_round_networks(model_path: str | Path,
                        device: torch.device | str = "cpu") -> tuple[list[nn.Module], dict[str, Any]]:
    """The networks of rounds 0..K-1 stored next to ``model_path`` (empty when the file is absent) and its metadata."""
    path = Path(model_path).parent / ROUNDS_FILE
    if not path.is_file():
        return [], {}
    state, meta = load_weights(path)
    if meta.get("kind") != "iam_rounds":
        raise CheckpointError(f"{path}: holds a {meta.get('kind')!r}, not IAM round networks")
    nets = []
    for j in range(int(meta["rounds"])):
        net = build_classifier(len(meta["classes"]), meta["arch"], meta.get("in_chans", 1))
        prefix = f"round{j}."
        net.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        nets.append(net.to(device).eval())
    return nets, meta


@torch.no_grad()
def round_maps(nets: Sequence[nn.Module], x: Tensor, classes: Sequence[int], method: str = "cam") -> Tensor:
    """Normalised maps (R, B, H, W) of each network for the given class of each image (x: (B, 1, H, W))."""
    idx = torch.as_tensor(list(classes), dtype=torch.long, device=x.device)
    out = []
    for net in nets:
        with eval_mode(net):
            maps, _ = class_maps(net, x, method)
        norm = normalized_maps(maps, (x.shape[-2], x.shape[-1]))
        out.append(norm[torch.arange(x.shape[0], device=x.device), idx])
    return torch.stack(out)


def aggregate_maps(maps: Tensor, how: str = "max") -> Tensor:
    """(R, B, H, W) -> (B, H, W) by the max or the mean over rounds."""
    if how == "max":
        return maps.amax(0)
    if how == "mean":
        return maps.mean(0)
    raise ValueError(f"unknown aggregate {how!r}; choose max or mean")


def iam_heatmaps(nets: Sequence[nn.Module], x: Tensor, classes: Sequence[int], method: str = "cam",
                 how: str = "max") -> np.ndarray:
    """(B, H, W) float32 IAM localization maps in [0, 1] for the given class of each image."""
    return aggregate_maps(round_maps(nets, x, classes, method), how).float().cpu().numpy()
