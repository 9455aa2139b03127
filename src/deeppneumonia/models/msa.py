"""Multi-scale aggregation (MSA) classifier for Iterative Attention Mining (Cai et al. 2018; a reconstruction).

The paper adds MSA so that small findings (e.g. nodules) are localized better: the classifier does not only
see ``layer4`` (stride 32) but also earlier, finer stages. Its exact layout is not published; here:

    for each aggregated stage i:  P_i = ReLU(BN(Conv1x1(F_i)))           (C_i -> ``width`` channels)
    A = concat_i resize(P_i, size of the finest aggregated stage)      (bilinear upsampling)
    logits = fc(GAP(A))

Because GAP and ``fc`` are linear, ``logits_c = mean_{h,w} CAM_c + b_c`` with ``CAM_c = sum_k w_ck A_k``:
the class activation map (Zhou et al. 2016) is exact at the finest aggregated resolution
(:func:`deeppneumonia.models.cam.class_activation_maps`).

The network is an :class:`~deeppneumonia.models.resnet.XRayResNet` (``conv1`` .. ``layer4`` unchanged, so Stage I
encoders load into it and ``forward_intermediates`` works) plus an ``msa`` module; its ``fc`` takes ``width * len(layers)``
inputs. The architecture name says everything needed to rebuild it from a checkpoint's metadata:
``resnet18_msa34`` = ResNet18 aggregating layers 3 and 4 (:func:`msa_arch`, :func:`parse_msa_arch`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deeppneumonia.models.resnet import STAGE_CHANNELS, XRayResNet, grey_stem

MSA_WIDTH = 256  # channels each aggregated stage is projected to
_ARCH = re.compile(r"^(resnet18|resnet50)_msa([1-4]+)$")


def msa_arch(base: str, layers: Sequence[int]) -> str:
    """``("resnet18", (3, 4))`` -> ``"resnet18_msa34"`` (layers sorted, each 1..4, no repeats)."""
    ls = sorted(set(int(i) for i in layers))
    if not ls or any(i not in (1, 2, 3, 4) for i in ls):
        raise ValueError(f"MSA layers must be a non-empty subset of 1..4, got {tuple(layers)}")
    if base not in STAGE_CHANNELS:
        raise ValueError(f"MSA needs a ResNet backbone ({sorted(STAGE_CHANNELS)}), not {base!r}")
    return f"{base}_msa{''.join(map(str, ls))}"


def parse_msa_arch(arch: str) -> tuple[str, tuple[int, ...]] | None:
    """``"resnet18_msa34"`` -> ``("resnet18", (3, 4))``; None for a name without ``_msa``."""
    m = _ARCH.match(arch)
    if m is None:
        return None
    return m.group(1), tuple(sorted({int(c) for c in m.group(2)}))


class MSAModule(nn.Module):
    """Project each chosen stage to ``width`` channels, resize to the finest one, concatenate."""

    def __init__(self, layers: Sequence[int], stage_channels: Sequence[int], width: int = MSA_WIDTH) -> None:
        super().__init__()
        self.layers = tuple(layers)
        self.proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(stage_channels[i - 1], width, 1, bias=False), nn.BatchNorm2d(width),
                          nn.ReLU(inplace=True)) for i in self.layers)
        self.out_channels = width * len(self.layers)

    def forward(self, feats: Sequence[Tensor]) -> Tensor:
        """``feats``: outputs of layer1..layer4 -> (B, width * len(layers), h, w) at the finest chosen stage."""
        chosen = [feats[i - 1] for i in self.layers]
        size = chosen[0].shape[-2:]
        out = []
        for f, proj in zip(chosen, self.proj, strict=True):
            p = proj(f)
            if p.shape[-2:] != size:
                p = F.interpolate(p, size=size, mode="bilinear", align_corners=False)
            out.append(p)
        return torch.cat(out, 1)


class MSAResNet(XRayResNet):
    """A ResNet whose classifier pools the aggregated multi-scale map ``msa(layer1..4)`` instead of layer4."""

    fresh_prefixes = ("fc.", "msa.")

    def __init__(self, base: str, layers: Sequence[int], num_classes: int, in_chans: int = 1, **kwargs: Any) -> None:
        """The ``base`` ResNet plus an MSA module over ``layers`` and an ``fc`` on its channels (grey stem unless 3)."""
        super().__init__(base, num_classes, in_chans=3, **kwargs)
        self.msa = MSAModule(layers, STAGE_CHANNELS[base])
        self.fc = nn.Linear(self.msa.out_channels, num_classes)
        if in_chans != 3:
            self.conv1 = grey_stem(in_chans)

    def forward_features(self, x: Tensor) -> Tensor:
        """The map that is globally pooled for ``fc``: (B, width * len(layers), h, w)."""
        return self.msa(self.forward_intermediates(x))  # type: ignore[no-any-return]
