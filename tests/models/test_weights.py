"""train.init_weights: a local torchvision/timm ResNet state dict, RGB stem summed to grey, unmatched keys reported."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torchvision.models import resnet18

from deeppneumonia.errors import CheckpointError
from deeppneumonia.models.factory import build_classifier
from deeppneumonia.models.weights import adapt_input_conv, load_init_weights


@pytest.fixture(scope="module")
def tv_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return resnet18(weights=None).state_dict()  # an ImageNet-shaped (3-channel, 1000-class) torchvision state dict


@pytest.mark.parametrize("fmt", ["pth", "safetensors", "wrapped"])
def test_torchvision_resnet18_into_the_grey_classifier(tv_state: dict[str, torch.Tensor], tmp_path: Path,
                                                       fmt: str) -> None:
    path = tmp_path / f"r18.{'safetensors' if fmt == 'safetensors' else 'pth'}"
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in tv_state.items()}, str(path))
    elif fmt == "wrapped":  # a Lightning-style checkpoint with DDP prefixes
        torch.save({"state_dict": {f"module.{k}": v for k, v in tv_state.items()}, "epoch": 3}, path)
    else:
        torch.save(tv_state, path)
    model = build_classifier(2, "resnet18")
    report = load_init_weights(model, path)
    assert report.unexpected == []
    assert report.adapted == ["conv1.weight"]
    assert sorted(report.mismatched) == ["fc.bias", "fc.weight"]  # 1000 classes -> 2: left fresh, reported
    assert report.missing == []
    got = model.state_dict()
    assert torch.allclose(got["conv1.weight"], tv_state["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(got["layer3.1.bn2.running_var"], tv_state["layer3.1.bn2.running_var"])
    assert "unexpected" not in report.summary() and "mismatched 2" in report.summary()


def test_unmatched_keys_and_bad_files(tmp_path: Path) -> None:
    model = build_classifier(2, "resnet18")
    part = {"conv1.weight": torch.randn(64, 3, 7, 7), "head.proj.weight": torch.randn(4, 4)}
    torch.save(part, tmp_path / "part.pth")
    report = load_init_weights(model, tmp_path / "part.pth")
    assert report.unexpected == ["head.proj.weight"] and "layer1.0.conv1.weight" in report.missing
    with pytest.raises(CheckpointError, match="never downloaded"):
        load_init_weights(model, tmp_path / "nope.pth")
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="no tensor"):
        load_init_weights(model, tmp_path / "other.pth")


def test_adapt_input_conv_matches_a_grey_image_fed_as_rgb() -> None:
    w = torch.randn(8, 3, 3, 3)
    x = torch.rand(1, 1, 9, 9)
    rgb = torch.nn.functional.conv2d(x.expand(1, 3, 9, 9), w)
    assert torch.allclose(torch.nn.functional.conv2d(x, adapt_input_conv(1, w)), rgb, atol=1e-5)
