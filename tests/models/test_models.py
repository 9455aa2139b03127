from __future__ import annotations

import torch
from torchvision.models import resnet18

from deeppneumonia.models.attention import MGACRHeads
from deeppneumonia.models.factory import build_classifier, encoder_state, load_encoder


def test_stages_and_head_match_forward() -> None:
    m = build_classifier(4).eval()
    x = torch.randn(2, 1, 64, 64)
    feats = m.forward_intermediates(x)
    assert [f.shape[1:] for f in feats] == [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]
    assert torch.allclose(m.forward_head(feats[-1]), m(x), atol=1e-5)


def test_inference_network_is_a_plain_resnet18() -> None:
    """The saved classifier has exactly torchvision's resnet18 keys: no MGACR, no projector."""
    ours = set(build_classifier(4).state_dict())
    plain = set(resnet18(weights=None, num_classes=4).state_dict())
    assert ours == plain


def test_heads_give_two_maps_per_layer_with_gradients() -> None:
    m = build_classifier(2)
    heads = MGACRHeads((2, 4))
    feats = m.forward_intermediates(torch.randn(2, 1, 64, 64))
    f, mp, mn = heads(feats)
    assert [t.shape for t in mp] == [(2, 1, 8, 8), (2, 1, 2, 2)] and len(mn) == 2 and f[0].shape[1] == 128
    assert all(((t > 0) & (t < 1)).all() for t in mp + mn)
    (mp[0].sum() + mn[1].sum()).backward()
    assert m.layer2[0].conv1.weight.grad is not None and heads.heads[0].conv.weight.grad is not None


def test_encoder_roundtrip() -> None:
    a, b = build_classifier(3), build_classifier(5)
    state = encoder_state(a)
    assert not any(k.startswith("fc.") for k in state)
    load_encoder(b, state)
    assert torch.equal(a.layer3[0].conv1.weight, b.layer3[0].conv1.weight)


def test_table2_baselines_take_one_channel_and_vgg16_bn_has_batch_norm() -> None:
    import pytest

    for arch in ("resnet50", "vgg16", "vgg16_bn"):
        m = build_classifier(3, arch).eval()
        assert m(torch.randn(2, 1, 64, 64)).shape == (2, 3), arch
    bn = lambda a: sum(isinstance(x, torch.nn.BatchNorm2d) for x in build_classifier(3, a).modules())  # noqa: E731
    assert bn("vgg16") == 0 and bn("vgg16_bn") == 13  # one after each of VGG16's 13 convolutions
    with pytest.raises(ValueError, match="unknown architecture"):
        build_classifier(3, "vgg19")
