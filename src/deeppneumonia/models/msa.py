"""Multi-scale aggregation (MSA) classifier for Iterative Attention Mining (Cai et al. 2018; a reconstruction).

The paper adds MSA so that small findings (e.g. nodules) are localized better: the classifier does not only
see ``layer4`` (stride 32) but also earlier, finer stages. Its exact layout is not published; here:

    for each aggregated stage i:  P_i = ReLU(BN(Conv1x1(F_i)))           (C_i -> ``width`` channels)
    A = concat_i resize(P_i, size of the finest aggregated stage)      (bilinear upsampling)
    logits = fc(GAP(A))

Because GAP and ``fc`` are linear, ``logits_c = mean_{h,w} CAM_c + b_c`` with ``CAM_c = sum_k w_ck A_k``:
the class activation map (Zhou et al. 2016) is exact at the finest aggregated resolution
(:func:`deeppneumonia.models.cam.class_activation_maps`).

The network is a torchvision ``ResNet`` subclass (``conv1`` .. ``layer4`` unchanged, so Stage I encoders
load into it and ``forward_stages`` works) plus an ``msa`` module; its ``fc`` takes ``width * len(layers)``
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
from torchvision.models import ResNet
from torchvision.models.resnet import BasicBlock, Bottleneck

MSA_WIDTH = 256  # channels each aggregated stage is projected to
_ARCH = re.compile(r"^(resnet18|resnet50)_msa([1-4]+)$")
_BASE: dict[str, tuple[type[BasicBlock | Bottleneck], list[int], tuple[int, ...]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2], (64, 128, 256, 512)),
    "resnet50": (Bottleneck, [3, 4, 6, 3], (256, 512, 1024, 2048)),
}


def msa_arch(base: str, layers: Sequence[int]) -> str:
    """``("resnet18", (3, 4))`` -> ``"resnet18_msa34"`` (layers sorted, each 1..4, no repeats)."""
    ls = sorted(set(int(i) for i in layers))
    if not ls or any(i not in (1, 2, 3, 4) for i in ls):
        raise ValueError(f"MSA layers must be a non-empty subset of 1..4, got {tuple(layers)}")
    if base not in _BASE:
        raise ValueError(f"MSA needs a ResNet backbone ({sorted(_BASE)}), not {base!r}")
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


class MSAResNet(ResNet):
    """A ResNet whose classifier pools the aggregated multi-scale map ``msa(layer1..4)`` instead of layer4."""

    def __init__(self, base: str, layers: Sequence[int], num_classes: int, **kwargs: Any) -> None:
        block, blocks, channels = _BASE[base]
        super().__init__(block, blocks, num_classes=num_classes, **kwargs)
        self.msa = MSAModule(layers, channels)
        self.fc = nn.Linear(self.msa.out_channels, num_classes)

    def stages(self, x: Tensor) -> list[Tensor]:
        from deeppneumonia.models.resnet import forward_stages

        return forward_stages(self, x)

    def cam_features(self, x: Tensor) -> Tensor:
        """The map that is globally pooled for ``fc``: (B, width * len(layers), h, w)."""
        return self.msa(self.stages(x))  # type: ignore[no-any-return]

    def _forward_impl(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.avgpool(self.cam_features(x)), 1))  # type: ignore[no-any-return]


def build_msa_classifier(num_classes: int, arch: str, in_chans: int = 1) -> MSAResNet:
    parsed = parse_msa_arch(arch)
    if parsed is None:
        raise ValueError(f"not an MSA architecture name: {arch!r} (e.g. resnet18_msa34)")
    model = MSAResNet(parsed[0], parsed[1], num_classes)
    if in_chans != 3:
        model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model
