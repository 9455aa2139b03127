"""Batched prediction of a classifier over a cached split (shared by validation, evaluation and tests)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from deeppneumonia.data.batches import CachedSplit
from deeppneumonia.runtime.device import Runtime, eval_mode
from deeppneumonia.transforms.inputs import make_inputs
from deeppneumonia.transforms.preprocessing import Preprocessing


@torch.no_grad()
def predict_split(model: nn.Module, split: CachedSplit, rt: Runtime, pre: Preprocessing,
                  multilabel: bool = False, batch_size: int = 64) -> np.ndarray:
    """(N, C) probabilities (softmax, or sigmoid for multi-label) in the split's order."""
    out = []
    with eval_mode(model):
        for batch in split.iterate(batch_size):
            x, _ = make_inputs(batch, rt, pre, None, None)
            with rt.autocast():
                logits = model(x).float()
            out.append((torch.sigmoid(logits) if multilabel else torch.softmax(logits, 1)).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)
