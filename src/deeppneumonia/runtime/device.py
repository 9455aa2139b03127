"""Device, precision and seeding: picked once per run from the config, never at import."""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from deeppneumonia.errors import ConfigError

log = logging.getLogger(__name__)


def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX-BF16), where bf16 autocast is fast."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype, None = fp32
    channels_last: bool

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def check_device(device: str) -> torch.device:
    """The torch device named by ``run.device`` / ``--device``; ConfigError when it is malformed or absent here."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(f"device {device!r} is not a device name (auto, cpu, cuda, cuda:N, mps)") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r}: no CUDA GPU is available here; use run.device=cpu (or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r}: Apple MPS is not available here; use run.device=cpu (or auto)")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {device!r}: choose auto, cpu, cuda, cuda:N or mps")
    return dev


def resolve_runtime(device: str = "auto", precision: str = "auto", channels_last: bool = True,
                    threads: int = 0) -> Runtime:
    dev = check_device(device)
    if threads > 0:
        torch.set_num_threads(threads)
    dtype: torch.dtype | None
    if precision == "auto":
        if dev.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.bfloat16 if cpu_has_bf16() else None
    else:
        dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if dev.type == "cpu" and dtype == torch.float16:
        log.warning("fp16 autocast on CPU is slow; use bf16 or fp32")
    log.info("device %s, autocast %s, channels_last %s", dev, dtype or "off (fp32)", channels_last)
    return Runtime(dev, dtype, channels_last)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (called by the run, never at import)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def eval_mode(*modules: torch.nn.Module) -> Iterator[None]:
    """Switch modules to eval and restore each one's previous mode afterwards."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes, strict=True):
            m.train(mode)


def compile_blocks(module: torch.nn.Module) -> None:
    """``torch.compile`` each direct child that holds parameters, in place (``run.compile``).

    Children rather than the module itself, because the tasks call the stages one by one
    (``forward_intermediates``) to reach the intermediate features MGACR needs; the state-dict keys do not change.
    """
    for child in module.children():
        if any(True for _ in child.parameters()):
            child.compile()
