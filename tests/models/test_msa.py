from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deeppneumonia.inference.predictor import Predictor
from deeppneumonia.models.cam import class_activation_maps, gradcam_maps, normalized_maps, salient_mask
from deeppneumonia.models.checkpoint import save_weights
from deeppneumonia.models.factory import build_classifier, encoder_state, load_encoder
from deeppneumonia.models.msa import MSAResNet, msa_arch, parse_msa_arch


def test_arch_names_roundtrip_and_reject_nonsense() -> None:
    assert msa_arch("resnet18", (4, 3)) == "resnet18_msa34"
    assert parse_msa_arch("resnet18_msa234") == ("resnet18", (2, 3, 4))
    assert parse_msa_arch("resnet18") is None
    with pytest.raises(ValueError):
        msa_arch("resnet18", (5,))
    with pytest.raises(ValueError):
        msa_arch("vgg16", (3, 4))


@pytest.mark.parametrize("arch, cam_size", [("resnet18", 2), ("resnet18_msa34", 4), ("resnet18_msa234", 8)])
def test_cam_is_exact_and_as_fine_as_the_finest_aggregated_stage(arch: str, cam_size: int) -> None:
    """logits_c = mean CAM_c + b_c: the map explains the prediction exactly; MSA makes it finer."""
    m = build_classifier(3, arch).eval()
    x = torch.randn(2, 1, 64, 64)
    maps, logits = class_activation_maps(m, x)
    assert maps.shape == (2, 3, cam_size, cam_size)
    assert torch.allclose(logits, m(x), atol=1e-5)
    assert torch.allclose(maps.mean((2, 3)) + m.fc.bias, m(x), atol=1e-5)
    g, _ = gradcam_maps(m, x)  # for a GAP + linear head Grad-CAM = CAM / (h w)
    assert torch.allclose(g, maps / cam_size ** 2, atol=1e-5)
    assert all(p.grad is None for p in m.parameters())


def test_msa_network_takes_a_stage1_encoder_and_loads_through_the_predictor(tmp_path: Path) -> None:
    m = build_classifier(2, "resnet18_msa34")
    assert isinstance(m, MSAResNet) and m.fc.in_features == 512
    load_encoder(m, encoder_state(build_classifier(2)))  # msa.* and fc.* start afresh
    path = tmp_path / "model.safetensors"
    meta = {"kind": "classifier", "arch": "resnet18_msa34", "in_chans": 1, "classes": ["a", "b"], "task": "multiclass",
            "preprocessing": {"size": 64, "resize": "squash", "mean": 0.5, "std": 0.25}}
    save_weights(path, m.state_dict(), meta)
    pred = Predictor.from_checkpoint(path, "cpu")
    x = torch.randn(3, 1, 64, 64)
    assert torch.allclose(torch.from_numpy(pred.probabilities(x)), torch.softmax(m.eval()(x), 1), atol=1e-5)


def test_salient_mask_follows_the_map_and_the_selected_classes() -> None:
    maps = torch.zeros(2, 2, 4, 4)
    maps[:, 1, 1, 2] = 5.0  # class 1 peaks at row 1, column 2
    maps[:, 0] = -1.0  # class 0: no positive evidence anywhere
    norm = normalized_maps(maps, (4, 4))
    assert norm[:, 0].abs().sum() == 0 and norm[0, 1].max() == 1
    select = torch.tensor([[False, True], [True, False]])
    mask = salient_mask(maps, select, 0.9, (4, 4))
    assert mask[0, 0].nonzero().tolist() == [[1, 2]]
    assert not mask[1].any()  # image 1 selects class 0 only, which has no positive value


def test_onnx_feature_wrapper_gives_the_msa_networks_own_logits_and_cam_map() -> None:
    from deeppneumonia.inference.export import _WithFeatures

    m = build_classifier(2, "resnet18_msa34").eval()
    x = torch.randn(2, 1, 64, 64)
    logits, feats = _WithFeatures(m)(x)
    assert torch.allclose(logits, m(x), atol=1e-5) and feats.shape == (2, 512, 4, 4)
