"""Initialise a network from a local weights file (``train.init_weights=PATH``); nothing is ever downloaded.

Reads torchvision or timm ResNet state dicts (their keys are the same: ``conv1``, ``bn1``, ``layer1`` ..
``layer4``, ``fc``) from ``.safetensors`` or a ``.pth``/``.pt``/``.bin`` file loaded with ``weights_only=True``
(no code in the file is ever run). A file holding ``{"state_dict": ...}`` or ``{"model": ...}`` (Lightning, timm
training checkpoints) is unwrapped, and ``module.`` / ``model.`` / ``backbone.`` prefixes are stripped.

The first convolution is adapted as timm's ``adapt_input_conv`` does: RGB weights (O, 3, k, k) become one grey
channel by summing over the input channels (a grey image fed as three equal channels gives the same response).
Tensors whose shape still differs (e.g. a 1000-class ``fc``) stay as initialised and are reported, as are keys
the network lacks (unexpected) and keys the file lacks (missing).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from deeppneumonia.errors import CheckpointError

log = logging.getLogger(__name__)

_PREFIXES = ("module.", "model.", "backbone.")
_WRAPPERS = ("state_dict", "model", "model_state_dict", "net")


@dataclass
class InitReport:
    """What :func:`load_init_weights` did. Lists hold state-dict keys."""

    path: str
    loaded: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)  # input convolutions collapsed to the network's channels
    mismatched: list[str] = field(default_factory=list)  # in both, shapes differ: left as initialised
    missing: list[str] = field(default_factory=list)  # the network has them, the file does not
    unexpected: list[str] = field(default_factory=list)  # the file has them, the network does not

    def summary(self) -> str:
        """One line: counts, then the first few keys of each non-empty list."""
        parts = [f"{len(self.loaded)} tensors loaded from {self.path}"]
        for name in ("adapted", "mismatched", "missing", "unexpected"):
            keys = getattr(self, name)
            if keys:
                parts.append(f"{name} {len(keys)} ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})")
        return "; ".join(parts)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a local ``.safetensors`` or ``weights_only`` ``.pth`` file, unwrapped and de-prefixed.

    Raises:
        CheckpointError: no such file, or it holds no state dict of tensors.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"train.init_weights: {path} is not a file (weights are never downloaded)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj: object = load_file(str(path), device="cpu")
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle with code, truncated file, ...
            raise CheckpointError(f"train.init_weights: {path} cannot be read with weights_only=True: {exc}") from exc
    for _ in range(2):
        if isinstance(obj, dict):
            inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
            if inner is not None:
                obj = inner
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"train.init_weights: {path} holds no state dict of tensors")
    state: dict[str, Tensor] = {}
    for key, value in obj.items():
        k = str(key)
        for prefix in _PREFIXES:
            if k.startswith(prefix):
                k = k[len(prefix):]
        state[k] = value
    return state


def adapt_input_conv(in_chans: int, weight: Tensor) -> Tensor:
    """timm's rule: an RGB stem (O, 3, k, k) -> (O, 1, k, k) by summing over the input channels.

    Other channel counts: the three channels repeated and rescaled by 3 / in_chans (timm does the same).
    """
    if weight.shape[1] == in_chans:
        return weight
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    if weight.shape[1] != 3:
        raise ValueError(f"cannot adapt a {weight.shape[1]}-channel input convolution to {in_chans} channels")
    reps = -(-in_chans // 3)
    return weight.repeat(1, reps, 1, 1)[:, :in_chans] * (3 / in_chans)


def load_init_weights(model: nn.Module, path: str | Path) -> InitReport:
    """Copy the matching tensors of a local weights file into ``model`` (in place); report the rest.

    Args:
        model: the network (e.g. an :class:`~deeppneumonia.models.resnet.XRayResNet` with a 1-channel stem).
        path: ``.safetensors`` or ``.pth`` (torchvision/timm ResNet state dict, or a checkpoint wrapping one).

    Returns:
        An :class:`InitReport`; ``report.summary()`` is logged.

    Raises:
        CheckpointError: the file is missing or unreadable, or not a single tensor matched the network.
    """
    src = read_state_dict(path)
    own = model.state_dict()
    report = InitReport(str(path))
    take: dict[str, Tensor] = {}
    for key, value in src.items():
        if key not in own:
            report.unexpected.append(key)
            continue
        target = own[key]
        if value.ndim == 4 and target.ndim == 4 and value.shape[1] != target.shape[1] \
                and value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:]:
            value = adapt_input_conv(target.shape[1], value.float())
            report.adapted.append(key)
        if value.shape != target.shape:
            report.mismatched.append(key)
            continue
        take[key] = value.to(target.dtype)
        report.loaded.append(key)
    report.missing = [k for k in own if k not in take and k not in report.mismatched]
    if not take:
        raise CheckpointError(f"train.init_weights: no tensor of {path} matches the network (e.g. file keys "
                              f"{list(src)[:3]}, network keys {list(own)[:3]})")
    model.load_state_dict(take, strict=False)
    log.info("init weights: %s", report.summary())
    return report


__all__ = ["InitReport", "adapt_input_conv", "load_init_weights", "read_state_dict"]
