"""The classifier: torchvision's ResNet on one grey channel, with timm's model API as methods.

:class:`XRayResNet` is a ``torchvision.models.ResNet`` (same modules, same state-dict keys: the network saved
for inference is exactly ``torchvision.models.resnet18(num_classes=C)`` with a 1-channel ``conv1``) plus:

* ``forward_intermediates(x)``: the outputs of ``layer1`` .. ``layer4`` (what MGACR and MSA read);
* ``forward_features(x)``: the map the head pools (``layer4`` here; the aggregated map of an MSA network);
* ``forward_head(x, pre_logits=False)``: global average pooling, then ``fc`` (or the pooled features);
* ``fresh_prefixes``: the parameters a Stage I encoder does not initialise (``fc`` here; subclasses add theirs).

MGACR heads and the SimCLR projector live outside the network (``models/attention.py``, ``models/projector.py``),
so inference costs nothing extra by construction (paper Sec. IV-C). Weights are never downloaded.
The multi-scale (``models/msa.py``) and cross-attention (``models/can.py``) networks extend this class;
``models/factory.py`` builds any of them from an architecture name.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torchvision.models import ResNet
from torchvision.models.resnet import BasicBlock, Bottleneck

STAGE_CHANNELS = {"resnet18": (64, 128, 256, 512), "resnet50": (256, 512, 1024, 2048)}
BLOCKS: dict[str, tuple[type[BasicBlock | Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


def grey_stem(in_chans: int = 1) -> nn.Conv2d:
    """ResNet's 7x7 stride-2 ``conv1`` for ``in_chans`` input channels, with torchvision's (Kaiming) init."""
    conv = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return conv


class XRayResNet(ResNet):
    """A torchvision ResNet whose stem takes ``in_chans`` channels, with the model API as methods.

    Args:
        base: ``"resnet18"`` or ``"resnet50"``.
        num_classes: outputs of ``fc``.
        in_chans: input channels (1 for grey radiographs; 3 keeps torchvision's stem).
    """

    fresh_prefixes: ClassVar[tuple[str, ...]] = ("fc.",)

    def __init__(self, base: str = "resnet18", num_classes: int = 1000, in_chans: int = 1, **kwargs: Any) -> None:
        if base not in BLOCKS:
            raise ValueError(f"unknown ResNet {base!r}; choose from {sorted(BLOCKS)}")
        block, layers = BLOCKS[base]
        super().__init__(block, layers, num_classes=num_classes, **kwargs)
        self.base = base
        if in_chans != 3:
            self.conv1 = grey_stem(in_chans)

    def forward_intermediates(self, x: Tensor) -> list[Tensor]:
        """Outputs of ``layer1`` .. ``layer4``: shapes (N, C_i, H/4/2^(i-1), W/4/2^(i-1))."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            feats.append(x)
        return feats

    def forward_features(self, x: Tensor) -> Tensor:
        """The map the head pools, (N, K, h, w): ``layer4``'s output for a plain ResNet."""
        return self.forward_intermediates(x)[-1]

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Global average pooling of ``x`` (N, K, h, w), then ``fc`` (or the pooled (N, K) with ``pre_logits``)."""
        pooled = torch.flatten(self.avgpool(x), 1)
        return pooled if pre_logits else self.fc(pooled)  # type: ignore[no-any-return]

    def _forward_impl(self, x: Tensor) -> Tensor:
        """``forward`` of torchvision's ResNet: :meth:`forward_head` of :meth:`forward_features`."""
        return self.forward_head(self.forward_features(x))
