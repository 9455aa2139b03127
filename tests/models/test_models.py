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


def _grown_encoder(seed: int = 1) -> dict[str, torch.Tensor]:
    """An encoder whose convolutions grew unevenly (as SimCLR's did: conv1 x5.8, layer4 x1.05), BN stats set."""
    torch.manual_seed(seed)
    enc = build_classifier(3)
    with torch.no_grad():
        for i, m in enumerate(x for x in enc.modules() if isinstance(x, torch.nn.Conv2d)):
            m.weight.mul_(1.0 + 0.5 * (i % 5))
        enc.train()
        for _ in range(3):
            enc(torch.randn(8, 1, 64, 64))  # running statistics that fit the grown weights
    return encoder_state(enc)


def test_encoder_rescale_keeps_the_function_and_restores_fresh_norms() -> None:
    """train.encoder_rescale: every conv back at its fresh-init norm, outputs unchanged in eval and train mode."""
    from deeppneumonia.models.factory import conv_bn_pairs

    state = _grown_encoder()
    torch.manual_seed(0)
    plain = build_classifier(4)
    torch.manual_seed(0)
    scaled = build_classifier(4)
    fresh = {n: m.weight.norm().item() for n, m, _ in conv_bn_pairs(scaled)}
    assert len(fresh) == 20  # every convolution of a ResNet18 feeds a BatchNorm
    load_encoder(plain, state)
    load_encoder(scaled, state, rescale=True)
    for n, m, _ in conv_bn_pairs(scaled):
        assert abs(m.weight.norm().item() - fresh[n]) < 1e-4 * fresh[n], n
    assert not torch.allclose(plain.conv1.weight, scaled.conv1.weight)  # the loaded norms differed
    x = torch.randn(6, 1, 64, 64)
    for mode in (False, True):
        plain.train(mode), scaled.train(mode)
        with torch.no_grad():
            assert torch.allclose(plain(x), scaled(x), atol=2e-3), mode
    assert torch.allclose(plain.fc.weight, scaled.fc.weight)  # fresh parameters untouched


def test_encoder_rescale_restores_the_relative_step_of_a_fresh_network() -> None:
    """The point of rescaling: a conv whose norm grew by s takes SGD steps s^2 smaller relative to its weight
    (same function, gradient / s, weight x s); scaled back, its relative step is s^2 larger again."""
    state = _grown_encoder()
    x, y = torch.randn(8, 1, 64, 64), torch.randint(0, 4, (8,))
    rel = []
    for rescale in (False, True):
        torch.manual_seed(0)
        m = build_classifier(4)
        load_encoder(m, state, rescale=rescale)
        torch.nn.functional.cross_entropy(m(x), y).backward()
        w = m.layer1[1].conv2.weight  # the 5th convolution: grown x3 in _grown_encoder
        rel.append((w.grad.norm() / w.norm()).item())
    torch.manual_seed(0)
    grown = state["layer1.1.conv2.weight"].norm().item() / build_classifier(4).layer1[1].conv2.weight.norm().item()
    assert 2.5 < grown < 3.5
    assert abs(rel[1] / rel[0] - grown**2) < 0.05 * grown**2, (rel, grown)


def test_encoder_stages_load_the_low_layers_only() -> None:
    """train.encoder_stages=2: stem, layer1 and layer2 from the encoder; layer3, layer4 and fc as initialised."""
    import pytest

    state = _grown_encoder()
    torch.manual_seed(0)
    m = build_classifier(4)
    fresh = {k: v.clone() for k, v in m.state_dict().items()}
    load_encoder(m, state, stages=2)
    for k, v in m.state_dict().items():
        src = state if k.startswith(("conv1.", "bn1.", "layer1.", "layer2.")) else fresh
        assert torch.equal(v, src[k]), k
    with pytest.raises(ValueError, match=r"stages must be 0\.\.4"):
        load_encoder(m, state, stages=5)


def test_table2_baselines_take_one_channel_and_vgg16_bn_has_batch_norm() -> None:
    import pytest

    for arch in ("resnet50", "vgg16", "vgg16_bn"):
        m = build_classifier(3, arch).eval()
        assert m(torch.randn(2, 1, 64, 64)).shape == (2, 3), arch
    bn = lambda a: sum(isinstance(x, torch.nn.BatchNorm2d) for x in build_classifier(3, a).modules())  # noqa: E731
    assert bn("vgg16") == 0 and bn("vgg16_bn") == 13  # one after each of VGG16's 13 convolutions
    with pytest.raises(ValueError, match="unknown architecture"):
        build_classifier(3, "vgg19")


def test_readout_head_reads_every_channel() -> None:
    import pytest

    m = build_classifier(2)
    heads = MGACRHeads((3, 4), head="conv1x1")
    feats = m.forward_intermediates(torch.randn(3, 1, 128, 128))
    f, mp, mn = heads(feats)
    assert f[0].shape[1] == 256 and f[1].shape[1] == 512
    assert [t.shape for t in mp] == [(3, 1, 8, 8), (3, 1, 4, 4)] and [t.shape for t in mn] == [(3, 1, 8, 8), (3, 1, 4, 4)]
    assert all(((t > 0) & (t < 1)).all() for t in mp + mn)
    convs = [c for c in heads.modules() if isinstance(c, torch.nn.Conv2d)]
    assert [tuple(c.weight.shape) for c in convs] == [(2, 256, 1, 1), (2, 512, 1, 1)]
    (mp[0].sum() - mn[1].sum()).backward()
    assert m.layer3[0].conv1.weight.grad is not None and m.layer4[0].conv1.weight.grad is not None
    for c in convs:
        assert c.weight.grad is not None and torch.isfinite(c.weight.grad).all() and c.weight.grad.abs().sum() > 0
    # the readout sees which channel carries what; CBAM sees only the channel mean and max (permutation-invariant)
    x = torch.randn(2, 256, 4, 4)
    x2 = x[:, torch.randperm(256)]
    cbam = MGACRHeads((3,)).eval()
    heads.eval()
    feats_x = [torch.zeros(2, 64, 4, 4), torch.zeros(2, 128, 4, 4), x]
    feats_x2 = [*feats_x[:2], x2]
    assert torch.allclose(cbam(feats_x)[1][0], cbam(feats_x2)[1][0], atol=1e-6)
    l4 = torch.zeros(2, 512, 4, 4)
    assert not torch.allclose(heads([*feats_x, l4])[1][0], heads([*feats_x2, l4])[1][0])
    with pytest.raises(ValueError, match="unknown MGACR head"):
        MGACRHeads((1,), head="mlp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="layers"):
        MGACRHeads((5,))
    wide = MGACRHeads((1,), head="conv1x1", stage_channels=(256, 512, 1024, 2048))
    assert [tuple(c.weight.shape) for c in wide.modules() if isinstance(c, torch.nn.Conv2d)] == [(2, 256, 1, 1)]
