"""Build any classifier of the toolkit from its architecture name, and move Stage I encoders into it.

Architecture names (stored in every checkpoint's metadata, so a saved model can be rebuilt):

* ``resnet18``, ``resnet50``: :class:`~deeppneumonia.models.resnet.XRayResNet` (torchvision's keys);
* ``resnet18_msaNN`` (e.g. ``resnet18_msa34``): the multi-scale aggregation network of IAM (``models/msa.py``);
* ``can_resnet18``: the Cross-Attention Network (``models/can.py``);
* ``vgg16``, ``vgg16_bn``: Table II baselines only (no MGACR, no encoder).
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.models import vgg16, vgg16_bn

from deeppneumonia.errors import CheckpointError
from deeppneumonia.models.can import CrossAttentionResNet
from deeppneumonia.models.checkpoint import load_weights
from deeppneumonia.models.msa import MSAResNet, parse_msa_arch
from deeppneumonia.models.resnet import BLOCKS, XRayResNet

ARCHS = ("resnet18", "resnet50", "vgg16", "vgg16_bn", "can_resnet18")


def _vgg(arch: str, num_classes: int, in_chans: int) -> nn.Module:
    """A torchvision VGG16 (``vgg16_bn`` with batch norm) whose first convolution takes ``in_chans`` channels."""
    vgg = (vgg16 if arch == "vgg16" else vgg16_bn)(weights=None, num_classes=num_classes)
    stem = nn.Conv2d(in_chans, 64, kernel_size=3, padding=1)
    nn.init.kaiming_normal_(stem.weight, mode="fan_out", nonlinearity="relu")  # torchvision's VGG init
    nn.init.zeros_(stem.bias)  # type: ignore[arg-type]  # bias=True by default
    vgg.features[0] = stem
    return vgg


def build_classifier(num_classes: int, arch: str = "resnet18", in_chans: int = 1) -> XRayResNet:
    """A randomly initialised classifier whose stem takes ``in_chans`` channels (see the module docstring).

    Raises:
        ValueError: an unknown architecture name.
    """
    msa = parse_msa_arch(arch)
    if msa is not None:
        return MSAResNet(msa[0], msa[1], num_classes, in_chans)
    if arch == "can_resnet18":
        return CrossAttentionResNet(num_classes, in_chans)
    if arch in ("vgg16", "vgg16_bn"):  # vgg16_bn: the Table II row (plain VGG16 barely leaves the prior in 5 epochs)
        return _vgg(arch, num_classes, in_chans)  # type: ignore[return-value]  # only forward() is used for VGG
    if arch not in BLOCKS:
        raise ValueError(f"unknown architecture {arch!r}; choose from {ARCHS} or resnet18_msaNN")
    return XRayResNet(arch, num_classes, in_chans)


def load_classifier(path: str | Path) -> tuple[XRayResNet, dict[str, Any], dict[str, Tensor]]:
    """A saved ``model.safetensors`` rebuilt on the CPU: (model, metadata, state dict).

    Raises:
        CheckpointError: unreadable, metadata without a class list, an unknown architecture, or weights that do
            not fit the architecture and class count the metadata names.
    """
    state, meta = load_weights(path)
    classes = meta.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise CheckpointError(f"{path}: the metadata has no class list ('classes': {classes!r})")
    arch = meta.get("arch", "resnet18")
    try:
        model = build_classifier(len(classes), str(arch), int(meta.get("in_chans", 1)))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"{path}: the weights do not fit a {arch} with {len(classes)} classes {classes} as its "
                              f"metadata says ({detail})") from exc
    return model, meta, state


def encoder_state(model: nn.Module) -> dict[str, Tensor]:
    """The backbone weights without the classification layer (what Stage I saves)."""
    return {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}


def load_encoder(model: nn.Module, state: dict[str, Tensor], rescale: bool = False,
                 stages: int = 4) -> dict[str, float]:
    """Load Stage I encoder weights into a classifier; the parameters the model declares fresh stay as initialised.

    With ``rescale`` every loaded convolution that feeds a BatchNorm is scaled back to the norm of the model's own
    fresh initialisation (:func:`rescale_conv_bn`): the network computes the same function, but its weights
    train at the effective learning rate of a fresh network (docs/method.md, "Stage I weight norms").
    ``stages`` < 4 loads the stem and ``layer1`` .. ``layer<stages>`` only; deeper layers stay as initialised
    (partial transfer: Raghu et al. 2019 found the low layers carry most of what transfers to medical images).
    Returns the factor each convolution was scaled by (empty without ``rescale``).

    Raises:
        ValueError: a backbone key is missing from ``state``, or ``state`` holds a key the model lacks.
    """
    if not 0 <= stages <= 4:
        raise ValueError(f"stages must be 0..4, got {stages}")
    skipped = tuple(f"layer{i}." for i in range(stages + 1, 5))
    state = {k: v for k, v in state.items() if not k.startswith(skipped)}
    fresh = (model.fresh_prefixes if isinstance(model, XRayResNet) else ("fc.",)) + skipped
    init_norms = {n: c.weight.detach().norm() for n, c, _ in conv_bn_pairs(model)} if rescale else {}
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.startswith(fresh)]
    if bad or unexpected:
        raise ValueError(f"encoder does not match the network: missing {bad[:5]}, unexpected {unexpected[:5]}")
    if not rescale:
        return {}
    return rescale_conv_bn(model, {n: v for n, v in init_norms.items() if f"{n}.weight" in state})


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, nn.Conv2d, nn.BatchNorm2d]]:
    """Each bias-free convolution whose output goes straight into a BatchNorm (the next module registered).

    In torchvision's ResNets that is every convolution: ``conv1``/``bn1``, ``convK``/``bnK`` in each block and
    ``downsample.0``/``downsample.1``.
    """
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    return [(n, m, nxt) for (n, m), (_, nxt) in pairwise(leaves)
            if isinstance(m, nn.Conv2d) and m.bias is None and isinstance(nxt, nn.BatchNorm2d)
            and nxt.num_features == m.out_channels]


@torch.no_grad()
def rescale_conv_bn(model: nn.Module, target_norms: dict[str, Tensor]) -> dict[str, float]:
    """Scale each named convolution feeding a BatchNorm to ``target_norms[name]``; returns the factors.

    A BatchNorm makes its convolution scale-invariant: scaling the weight by ``s`` scales the pre-BN activations
    by ``s``, which batch statistics remove in training and the running statistics (mean x s, var x s^2) remove
    in evaluation, so outputs are unchanged (to BatchNorm's eps). The gradient of the weight scales by ``1/s``,
    so the relative step an SGD update makes scales by ``1/s^2``: a weight that grew during Stage I learns slower
    in Stage II than a fresh one; scaling it back restores the fresh network's pace.
    """
    factors: dict[str, float] = {}
    for name, conv, bn in conv_bn_pairs(model):
        if name not in target_norms:
            continue
        s = float(target_norms[name]) / max(float(conv.weight.norm()), 1e-12)
        conv.weight.mul_(s)
        if bn.running_mean is not None and bn.running_var is not None:
            bn.running_mean.mul_(s)
            bn.running_var.mul_(s * s)
        factors[name] = s
    return factors
