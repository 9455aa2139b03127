"""Device, precision and seeding: picked once per run from the config, never at import."""

from __future__ import annotations

import contextlib
import logging
import os
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
        """An autocast context of ``dtype`` on the device, or a no-op context for fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    @property
    def memory_format(self) -> torch.memory_format:
        """``torch.channels_last`` when enabled, else the contiguous format."""
        return torch.channels_last if self.channels_last else torch.contiguous_format


def cuda_autocast_dtype(dev: torch.device) -> torch.dtype:
    """bf16 from compute capability 8.0 (Ampere) on, where cuDNN has bf16 convolutions; fp16 + GradScaler below.

    Not ``torch.cuda.is_bf16_supported()``: by default it also counts emulated bf16, so a T4 or V100 would get
    bf16 convolutions that run emulated and slowly.
    """
    return torch.bfloat16 if torch.cuda.get_device_capability(dev) >= (8, 0) else torch.float16


def configure_backends(dev: torch.device, deterministic: bool = False) -> None:
    """CUDA kernel choice: ``cudnn.benchmark`` (fastest kernels per shape), or deterministic algorithms.

    ``run.deterministic`` trades speed for bit-identical reruns on a GPU (so a resumed run computes exactly what
    an uninterrupted one would, as on CPU): cuDNN and cuBLAS are made deterministic and ops without a
    deterministic CUDA kernel warn.
    """
    if dev.type != "cuda":
        return
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS starts its handle
        torch.use_deterministic_algorithms(True, warn_only=True)


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


def autocast_dtype(dev: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype ``precision`` means on ``dev`` (None: fp32); ``auto`` as in :func:`resolve_runtime`."""
    if precision == "auto":
        return cuda_autocast_dtype(dev) if dev.type == "cuda" else torch.bfloat16 if cpu_has_bf16() else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast_name(device: str, precision: str) -> str:
    """``fp32``, ``bf16`` or ``fp16``: what a run with these settings computes in here (for records)."""
    dtype = autocast_dtype(check_device(device), precision)
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def resolve_runtime(device: str = "auto", precision: str = "auto", channels_last: bool = True,
                    threads: int = 0, deterministic: bool = False) -> Runtime:
    """Device, autocast dtype and memory format of a run; also sets threads and CUDA backends.

    ``precision="auto"``: bf16 on Ampere+ GPUs (fp16 on older ones) and on CPUs with native bf16, else fp32.
    Raises ConfigError for a device that is malformed or absent (:func:`check_device`).
    """
    dev = check_device(device)
    if threads > 0:
        torch.set_num_threads(threads)
    configure_backends(dev, deterministic)
    dtype = autocast_dtype(dev, precision)
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
    Under DDP with ``run.sync_bn`` call it after ``convert_sync_batchnorm`` (the training loop does), so the
    compiled graphs hold the SyncBatchNorm layers that actually run.
    """
    for child in module.children():
        if any(True for _ in child.parameters()):
            child.compile()
