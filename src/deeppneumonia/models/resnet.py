"""The classifier: torchvision's ResNet18 on one grey channel, with per-stage features exposed.

The network saved for inference is exactly ``torchvision.models.resnet18(num_classes=C)`` with a
1-channel ``conv1``: MGACR heads and the SimCLR projector live outside it (``models/attention.py``,
``models/projector.py``), so inference costs nothing extra by construction (paper Sec. IV-C).
Weights are never downloaded: training starts from scratch or from a Stage I encoder.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models import ResNet, resnet18, resnet50, vgg16, vgg16_bn

STAGE_CHANNELS = {"resnet18": (64, 128, 256, 512), "resnet50": (256, 512, 1024, 2048)}


ARCHS = ("resnet18", "resnet50", "vgg16", "vgg16_bn", "can_resnet18")


def build_classifier(num_classes: int, arch: str = "resnet18", in_chans: int = 1) -> ResNet:
    """A randomly initialised ResNet (or, as a Table II baseline, VGG16) whose stem takes ``in_chans`` channels.

    ``resnet18_msaNN`` (e.g. ``resnet18_msa34``) is the multi-scale aggregation variant of IAM (``models/msa.py``).
    """
    if "_msa" in arch:
        from deeppneumonia.models.msa import build_msa_classifier

        return build_msa_classifier(num_classes, arch, in_chans)
    if arch == "can_resnet18":  # Cross-Attention Network (models/can.py), a ResNet with two layer4 branches
        from deeppneumonia.models.can import CrossAttentionResNet

        return CrossAttentionResNet(num_classes, in_chans)
    if arch in ("vgg16", "vgg16_bn"):  # vgg16_bn: the Table II row (plain VGG16 barely leaves the prior in 5 epochs)
        vgg = (vgg16 if arch == "vgg16" else vgg16_bn)(weights=None, num_classes=num_classes)
        stem = nn.Conv2d(in_chans, 64, kernel_size=3, padding=1)
        nn.init.kaiming_normal_(stem.weight, mode="fan_out", nonlinearity="relu")  # torchvision's VGG init
        nn.init.zeros_(stem.bias)  # type: ignore[arg-type]  # bias=True by default
        vgg.features[0] = stem
        return vgg  # type: ignore[return-value]  # only forward() is used for VGG
    factory = {"resnet18": resnet18, "resnet50": resnet50}.get(arch)
    if factory is None:
        raise ValueError(f"unknown architecture {arch!r}; choose from {ARCHS}")
    model = factory(weights=None, num_classes=num_classes)
    if in_chans != 3:
        model.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


def forward_stages(model: ResNet, x: Tensor) -> list[Tensor]:
    """Outputs of ``layer1`` .. ``layer4``: shapes (N, C_i, H/4/2^(i-1), W/4/2^(i-1))."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    feats = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        x = layer(x)
        feats.append(x)
    return feats


def forward_head(model: ResNet, last: Tensor, pre_logits: bool = False) -> Tensor:
    """Global average pooling then the linear layer (or the pooled features with ``pre_logits``)."""
    pooled = torch.flatten(model.avgpool(last), 1)
    return pooled if pre_logits else model.fc(pooled)


def encoder_state(model: ResNet) -> dict[str, Tensor]:
    """The backbone weights without the classification layer (what Stage I saves)."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}


def load_encoder(model: ResNet, state: dict[str, Tensor]) -> None:
    """Load Stage I encoder weights into a classifier; the new ``fc`` (and MSA projections) stay randomly initialised."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    own = ("fc.", "msa.", "layer4_b.", "att_a.", "att_b.", "cls_", "bias_")  # heads, MSA, CAN's branch B: fresh
    bad = [k for k in missing if not k.startswith(own)]
    if bad or unexpected:
        raise ValueError(f"encoder does not match the network: missing {bad[:5]}, unexpected {unexpected[:5]}")
