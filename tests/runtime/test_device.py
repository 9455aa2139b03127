"""Precision names recorded beside results: what ``run.precision`` means on this machine."""

from __future__ import annotations

import pytest

from deeppneumonia.errors import ConfigError
from deeppneumonia.runtime import device
from deeppneumonia.runtime.device import autocast_name


@pytest.mark.parametrize("has_bf16, want", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cpu_follows_the_bf16_flag(monkeypatch: pytest.MonkeyPatch, has_bf16: bool, want: str) -> None:
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: has_bf16)
    assert autocast_name("cpu", "auto") == want


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_explicit_precision_is_kept(precision: str) -> None:
    assert autocast_name("cpu", precision) == precision


def test_absent_device_is_refused() -> None:
    with pytest.raises(ConfigError):
        autocast_name("cuda:7", "auto")
