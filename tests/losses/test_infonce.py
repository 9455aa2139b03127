"""Tests of the InfoNCE / NT-Xent loss (paper Eq. 1) and the contrastive accuracy (Fig. 6)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from deeppneumonia.losses import InfoNCELoss, contrastive_accuracy


def naive_infonce(z1: Tensor, z2: Tensor, tau: float) -> float:
    """Eq. (1) transcribed with loops over the 2N anchors (float64, with [k != i])."""
    z = [v / v.norm() for v in torch.cat([z1, z2]).detach().double()]
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = i + n if i < n else i - n
        num = math.exp(float(z[i] @ z[j]) / tau)
        den = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(n2) if k != i)
        total += -math.log(num / den)
    return total / n2


def naive_accuracy(z1: Tensor, z2: Tensor) -> float:
    z = [v / v.norm() for v in torch.cat([z1, z2]).detach().double()]
    n2 = len(z)
    n = n2 // 2
    hits = 0
    for i in range(n2):
        j = i + n if i < n else i - n
        best = max((k for k in range(n2) if k != i), key=lambda k: float(z[i] @ z[k]))
        hits += int(best == j)
    return hits / n2


@pytest.mark.parametrize("tau", [0.2, 0.5, 1.0])
def test_matches_naive_loop(tau: float) -> None:
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(6, 8, generator=g)
    z2 = torch.randn(6, 8, generator=g)
    loss = InfoNCELoss(temperature=tau)(z1, z2)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(naive_infonce(z1, z2, tau), rel=1e-5, abs=1e-6)


def test_default_temperature_is_paper_value() -> None:
    assert InfoNCELoss().temperature == 0.2


def test_scale_invariant_inputs_are_normalised() -> None:
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(4, 5, generator=g)
    z2 = torch.randn(4, 5, generator=g)
    loss = InfoNCELoss()
    torch.testing.assert_close(loss(z1, z2), loss(7.0 * z1, 0.3 * z2))


def test_aligned_views_have_lower_loss_than_random() -> None:
    g = torch.Generator().manual_seed(2)
    z1 = torch.randn(16, 32, generator=g)
    aligned = z1 + 0.01 * torch.randn(16, 32, generator=g)
    random = torch.randn(16, 32, generator=g)
    loss = InfoNCELoss()
    assert loss(z1, aligned).item() < loss(z1, random).item()


def test_orthogonal_identical_views_reach_lower_bound() -> None:
    # Identical views, all images mutually orthogonal: positive logit 1/tau, 2N-2 negatives at 0.
    n, tau = 4, 0.2
    z1 = 3.0 * torch.eye(n, 8)
    loss = InfoNCELoss(tau)(z1, z1.clone())
    expected = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + 2 * n - 2))
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert contrastive_accuracy(z1, z1.clone()).item() == 1.0


def test_accuracy_matches_naive_loop() -> None:
    g = torch.Generator().manual_seed(3)
    z1 = torch.randn(10, 4, generator=g)
    z2 = z1 + 0.8 * torch.randn(10, 4, generator=g)
    acc = contrastive_accuracy(z1, z2)
    assert acc.item() == pytest.approx(naive_accuracy(z1, z2))
    assert acc.requires_grad is False


def test_single_pair_has_zero_loss() -> None:
    z = torch.randn(1, 3)
    assert InfoNCELoss()(z, torch.randn(1, 3)).item() == pytest.approx(0.0, abs=1e-6)


def test_gradient_is_finite_and_nonzero() -> None:
    g = torch.Generator().manual_seed(4)
    z1 = torch.randn(5, 6, generator=g, requires_grad=True)
    z2 = torch.randn(5, 6, generator=g, requires_grad=True)
    InfoNCELoss()(z1, z2).backward()
    for grad in (z1.grad, z2.grad):
        assert grad is not None
        assert torch.isfinite(grad).all()
        assert grad.abs().sum() > 0


def test_bf16_autocast_gives_finite_fp32() -> None:
    g = torch.Generator().manual_seed(5)
    proj = nn.Linear(8, 16)
    x1 = torch.randn(6, 8, generator=g)
    x2 = torch.randn(6, 8, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z1, z2 = proj(x1), proj(x2)
        assert z1.dtype == torch.bfloat16
        loss = InfoNCELoss()(z1, z2)
        acc = contrastive_accuracy(z1, z2)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert acc.dtype == torch.float32
    ref = naive_infonce(z1.float(), z2.float(), 0.2)
    assert loss.item() == pytest.approx(ref, rel=1e-4)
    loss.backward()
    assert proj.weight.grad is not None and torch.isfinite(proj.weight.grad).all()


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError):
        InfoNCELoss(temperature=0.0)
    with pytest.raises(ValueError):
        InfoNCELoss()(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError):
        InfoNCELoss()(torch.randn(4), torch.randn(4))
