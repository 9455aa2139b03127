"""Checkpoints: inference weights as safetensors + JSON metadata; resumable training state apart.

``model.safetensors`` holds only the inference network (a plain ResNet classifier, no MGACR heads, no
projector) and, in its header metadata, a JSON document: classes, task, preprocessing (size, resize,
mean, std), thresholds, the resolved config and library versions. ``last.pt`` holds what resuming needs
(all module and optimizer states, epoch, best metric) and is read with ``torch.load(weights_only=True)``.
Every file is written to a temporary name and renamed into place, so a kill never leaves half a file.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor

from deeppneumonia.errors import CheckpointError

META_KEY = "deeppneumonia"


def _atomic_target(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def versions() -> dict[str, str]:
    import torchvision

    from deeppneumonia import __version__

    return {"deeppneumonia": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version()}


def save_weights(path: str | Path, state: dict[str, Tensor], metadata: dict[str, Any]) -> None:
    """Write ``state`` as safetensors with ``metadata`` (JSON) in the header, atomically."""
    path = Path(path)
    tmp = _atomic_target(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    save_file(tensors, str(tmp), metadata={META_KEY: json.dumps({**metadata, "versions": versions()})})
    os.replace(tmp, path)


def load_weights(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        state = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for a corrupt header
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    if META_KEY not in meta:
        raise CheckpointError(f"{path}: no deeppneumonia metadata; was it written by this toolkit?")
    return state, json.loads(meta[META_KEY])


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Training state for resuming (tensors, numbers, strings only), atomically."""
    path = Path(path)
    tmp = _atomic_target(path)
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: str | Path) -> dict[str, Any]:
    try:
        return torch.load(Path(path), map_location="cpu", weights_only=True)  # type: ignore[no-any-return]
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read training state ({exc}); delete it to start afresh") from exc


def write_json(path: str | Path, data: Any) -> None:
    path = Path(path)
    tmp = _atomic_target(path)
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)
