"""Checkpoints: inference weights as safetensors + JSON metadata; resumable training state apart.

``model.safetensors`` holds only the inference network (a plain ResNet classifier, no MGACR heads, no
projector) and, in its header metadata, a JSON document: classes, task, preprocessing (size, resize,
mean, std), thresholds, the resolved config and library versions. ``last.pt`` holds what resuming needs
(all module and optimizer states, epoch, best metric) and is read with ``torch.load(weights_only=True)``.
Every file is written to a temporary name, flushed to disk (fsync) and renamed into place, so a kill never
leaves half a file; :func:`remove_stale_temps` deletes the temporary files a kill left behind.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor

from deeppneumonia.errors import CheckpointError

META_KEY = "deeppneumonia"


def _atomic_target(path: Path) -> Path:
    """The temporary path ``.NAME.tmp-PID`` beside ``path`` to write before the rename; creates the folder.

    Raises CheckpointError when the folder cannot be created or ``path`` is a folder.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # under /proc, below a file, read-only, ...
        raise CheckpointError(f"{path.parent}: cannot create the output folder: {exc}") from exc
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder; cannot write a file there")
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _commit(tmp: Path, path: Path) -> None:
    """Flush ``tmp`` to disk, rename it onto ``path``, and flush the folder entry (best effort on odd filesystems)."""
    with tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete the ``.NAME.tmp-PID`` files that a killed writer left in ``folder``; returns what was removed."""
    removed: list[Path] = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for tmp in folder.glob(".*.tmp-*"):
        pid = tmp.name.rsplit(".tmp-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and _alive(int(pid)):
            continue  # another live process is writing it
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a process we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def versions() -> dict[str, str]:
    """Versions of deeppneumonia, torch, torchvision and Python (stored in checkpoint metadata)."""
    import torchvision

    from deeppneumonia import __version__

    return {"deeppneumonia": __version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version()}


def save_weights(path: str | Path, state: dict[str, Tensor], metadata: dict[str, Any]) -> None:
    """Write ``state`` as safetensors with ``metadata`` (JSON) in the header, atomically."""
    path = Path(path)
    tmp = _atomic_target(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    tmp.touch()  # created like every other output (0666 less the umask); safetensors alone would make it 0600
    mode = tmp.stat().st_mode & 0o777
    save_file(tensors, str(tmp), metadata={META_KEY: json.dumps({**metadata, "versions": versions()})})
    os.chmod(tmp, mode)
    _commit(tmp, path)


def load_weights(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state dict, metadata) of a checkpoint written by :func:`save_weights`.

    Raises CheckpointError for a missing or unreadable file, or metadata that is absent or not a JSON object.
    """
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
    try:
        info = json.loads(meta[META_KEY])
    except ValueError as exc:
        raise CheckpointError(f"{path}: the deeppneumonia metadata is not JSON ({exc})") from exc
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: the deeppneumonia metadata is not a JSON object")
    return state, info


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Training state for resuming (tensors, numbers, strings only), atomically."""
    path = Path(path)
    tmp = _atomic_target(path)
    torch.save(state, tmp)
    _commit(tmp, path)


_STATE_KEYS = ("modules", "optimizer", "scheduler", "epoch", "best", "best_epoch", "history")


def load_state(path: str | Path, modules: Iterable[str] | None = None) -> dict[str, Any]:
    """Read a ``last.pt``; with ``modules``, check that it is a training state of exactly those modules."""
    try:
        state = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: cannot read training state ({exc}); delete it to start afresh") from exc
    if modules is None:
        return state  # type: ignore[no-any-return]
    missing = [k for k in _STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path}: not a training state of this toolkit (missing {missing}); delete it to start "
                              "afresh")
    held, wanted = sorted(state["modules"]), sorted(modules)
    if held != wanted:
        raise CheckpointError(f"{path}: holds the training state of modules {held}, this stage trains {wanted} (a "
                              "last.pt of another stage or method?); delete it to start afresh")
    return state  # type: ignore[no-any-return]


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON (non-JSON values as ``str``), atomically."""
    path = Path(path)
    tmp = _atomic_target(path)
    tmp.write_text(json.dumps(data, indent=1, default=str))
    _commit(tmp, path)
