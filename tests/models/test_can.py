from __future__ import annotations

import torch

from deeppneumonia.models.can import CrossAttentionResNet
from deeppneumonia.models.factory import build_classifier, encoder_state, load_encoder


def test_shapes_and_the_cross_map_is_the_hadamard_product() -> None:
    model = build_classifier(3, "can_resnet18").eval()
    assert isinstance(model, CrossAttentionResNet)
    x = torch.randn(2, 1, 64, 64)
    out = model.forward_all(x)
    assert out["logits"].shape == (2, 3) and out["cross"].shape == (2, 3, 2, 2)
    torch.testing.assert_close(out["cross"], out["att_a"] * out["att_b"])
    torch.testing.assert_close(model(x), (out["logits_a"] + out["logits_b"]) / 2)
    assert float(out["cross"].min()) >= 0 and float(out["cross"].max()) <= 1


def test_gradients_reach_both_branches_and_the_shared_trunk() -> None:
    model = build_classifier(2, "can_resnet18")
    model(torch.randn(4, 1, 64, 64)).sum().backward()
    for name in ("layer4.0.conv1.weight", "layer4_b.0.conv1.weight", "layer1.0.conv1.weight", "att_a.weight",
                 "att_b.weight", "cls_a", "cls_b"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_branches_start_different_and_an_encoder_loads_into_the_trunk_and_branch_a() -> None:
    model = build_classifier(2, "can_resnet18")
    assert not torch.equal(model.layer4[0].conv1.weight, model.layer4_b[0].conv1.weight)
    enc = build_classifier(1, "resnet18")
    load_encoder(model, encoder_state(enc))
    torch.testing.assert_close(model.layer4[0].conv1.weight, enc.layer4[0].conv1.weight)
    torch.testing.assert_close(model.conv1.weight, enc.conv1.weight)


def test_export_refuses_a_cam_head_the_network_does_not_have(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pytest

    from deeppneumonia.errors import CheckpointError
    from deeppneumonia.inference.export import export_onnx
    from deeppneumonia.models.checkpoint import save_weights

    model = build_classifier(2, "can_resnet18")
    meta = {"kind": "classifier", "arch": "can_resnet18", "in_chans": 1, "classes": ["A", "B"], "task": "multilabel",
            "preprocessing": {"size": 32, "resize": "squash", "mean": 0.5, "std": 0.25}, "thresholds": None}
    save_weights(tmp_path / "m.safetensors", model.state_dict(), meta)
    with pytest.raises(CheckpointError, match="with-features"):
        export_onnx(tmp_path / "m.safetensors", tmp_path / "m.onnx", with_features=True)
