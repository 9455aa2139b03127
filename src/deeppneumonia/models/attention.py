"""MGACR attention heads: two spatial attention maps, map+ and map-, per residual layer (paper Fig. 4).

Two heads, chosen by ``train.mgacr.head``:

* ``"cbam"`` (the paper's, Fig. 4 and [33]): the CBAM spatial attention of Woo et al. 2018. The feature
  map is pooled over channels (mean and max) and a k x k convolution with two output channels gives the
  two maps. Each map sees only two pooled channels, so fitting a mask means reshaping the *magnitudes* of
  the backbone's features.
* ``"conv1x1"``: a linear readout of *all* channels, a 1 x 1 convolution C -> 2 at every position (as the
  auxiliary mask heads of segmentation-assisted classifiers). The backbone only has to make the lesion
  linearly separable in its features, not change their size.

Both end in batch normalisation (as in the official CBAM code: it keeps the logits from saturating the
sigmoid, which otherwise lets a map collapse to a constant) and a sigmoid.
The heads only see the backbone's features; the backbone does not consume the attended features, so
the heads can be dropped after training (the paper's "no cost at inference").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

HeadKind = Literal["cbam", "conv1x1"]
HEAD_KINDS: tuple[str, ...] = ("cbam", "conv1x1")


class SpatialAttentionPair(nn.Module):
    """CBAM spatial attention: (N, C, H, W) -> channel mean and max -> k x k conv -> BN -> sigmoid.

    Returns map+ and map-, each (N, 1, H, W) in (0, 1).
    """

    def __init__(self, kernel_size: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 2, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        pooled = torch.cat([feats.mean(1, keepdim=True), feats.amax(1, keepdim=True)], dim=1)
        maps = torch.sigmoid(self.bn(self.conv(pooled)))
        return maps[:, 0:1], maps[:, 1:2]


class ReadoutAttentionPair(nn.Module):
    """Linear readout of all channels: (N, C, H, W) -> 1 x 1 conv C -> 2 -> BN -> sigmoid.

    Returns map+ and map-, each (N, 1, H, W) in (0, 1).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(2)

    def forward(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        maps = torch.sigmoid(self.bn(self.conv(feats)))
        return maps[:, 0:1], maps[:, 1:2]


def make_head(kind: str, channels: int, kernel_size: int = 7) -> nn.Module:
    """One attention pair of ``kind`` for a layer with ``channels`` channels."""
    if kind == "cbam":
        return SpatialAttentionPair(kernel_size)
    if kind == "conv1x1":
        return ReadoutAttentionPair(channels)
    raise ValueError(f"unknown MGACR head {kind!r}; choose one of {HEAD_KINDS}")


class MGACRHeads(nn.Module):
    """One attention pair per chosen residual layer (1-based layer numbers).

    Args:
        layers: residual layers that get a head.
        kernel_size: the CBAM convolution's kernel (``head="cbam"`` only).
        head: ``"cbam"`` (paper) or ``"conv1x1"`` (reads all channels).
        stage_channels: channels of the four residual layers' outputs (ResNet18's by default); the
            ``conv1x1`` head needs them.
    """

    def __init__(self, layers: Sequence[int] = (1, 2, 3, 4), kernel_size: int = 7, head: HeadKind = "cbam",
                 stage_channels: Sequence[int] = (64, 128, 256, 512)) -> None:
        super().__init__()
        self.layers = tuple(layers)
        self.kind: str = head
        bad = [i for i in self.layers if not 1 <= i <= len(stage_channels)]
        if bad:
            raise ValueError(f"MGACR layers must lie in 1..{len(stage_channels)}; got {list(self.layers)}")
        self.heads = nn.ModuleList(make_head(head, stage_channels[i - 1], kernel_size) for i in self.layers)

    def forward(self, stage_feats: Sequence[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Returns (features, maps+, maps-) of the chosen layers."""
        feats = [stage_feats[i - 1] for i in self.layers]
        pairs = [head(f) for head, f in zip(self.heads, feats, strict=True)]
        return feats, [p[0] for p in pairs], [p[1] for p in pairs]
