"""MGACR attention heads: two CBAM-style spatial attention maps per residual layer (paper Fig. 4).

Each head pools its feature map over channels (mean and max, Woo et al. 2018, CBAM) and a k x k
convolution with two output channels gives two independent maps, map+ and map-, through batch
normalisation (as in the official CBAM code: it keeps the logits from saturating the sigmoid, which
otherwise lets a map collapse to a constant) and a sigmoid.
The heads only see the backbone's features; the backbone does not consume the attended features, so
the heads can be dropped after training (the paper's "no cost at inference").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class SpatialAttentionPair(nn.Module):
    """(N, C, H, W) features -> map+ and map-, each (N, 1, H, W) in (0, 1)."""

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        pooled = torch.cat([feats.mean(1, keepdim=True), feats.amax(1, keepdim=True)], dim=1)
        maps = torch.sigmoid(self.bn(self.conv(pooled)))
        return maps[:, 0:1], maps[:, 1:2]


class MGACRHeads(nn.Module):
    """One :class:`SpatialAttentionPair` per chosen residual layer (1-based layer numbers)."""

    def __init__(self, layers: Sequence[int] = (1, 2, 3, 4), kernel_size: int = 7) -> None:
        super().__init__()
        self.layers = tuple(layers)
        self.heads = nn.ModuleList(SpatialAttentionPair(kernel_size) for _ in self.layers)

    def forward(self, stage_feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Returns (features, maps+, maps-) of the chosen layers."""
        feats = [stage_feats[i - 1] for i in self.layers]
        pairs = [head(f) for head, f in zip(self.heads, feats, strict=True)]
        return feats, [p[0] for p in pairs], [p[1] for p in pairs]
