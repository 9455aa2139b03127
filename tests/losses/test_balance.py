"""CAN losses: NaN labels contribute nothing, the balance loss reduces to (weighted) BCE, the attention loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from deeppneumonia.losses.balance import MultiLabelBalanceLoss, balance_weights, cross_attention_loss


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(16, 5, generator=g) * 2
    target = (torch.rand(16, 5, generator=g) < 0.3).float()
    return logits, target


def test_gamma0_no_weights_is_bce() -> None:
    logits, target = _data()
    loss = MultiLabelBalanceLoss(gamma=0.0, pos_weight="none")(logits, target)
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(logits, target))


def test_gamma0_dataset_weights_is_weighted_bce() -> None:
    logits, target = _data(1)
    train = (torch.rand(200, 5, generator=torch.Generator().manual_seed(2)) < torch.tensor([.05, .1, .3, .5, .8])).float()
    wp, wn = balance_weights(train)
    loss = MultiLabelBalanceLoss(train, gamma=0.0, pos_weight="dataset")(logits, target)
    # weighted BCE: each element weighted w+ (positive) or w- (negative)
    weight = target * wp + (1 - target) * wn
    ref = F.binary_cross_entropy_with_logits(logits, target, weight=weight)
    torch.testing.assert_close(loss, ref)
    # the weights balance each finding: w+ n+ == w- n-, and the rarer half weighs more
    pos, neg = train.sum(0), (1 - train).sum(0)
    torch.testing.assert_close(wp * pos, wn * neg)
    assert wp[0] > wp[4] and wn[0] < wn[4]


def test_nan_labels_contribute_nothing() -> None:
    logits, target = _data(3)
    with_nan = target.clone()
    with_nan[0, 1] = with_nan[5, 3] = math.nan
    loss_fn = MultiLabelBalanceLoss(gamma=2.0, pos_weight="batch")
    logits = logits.requires_grad_()
    loss = loss_fn(logits, with_nan)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad is not None
    assert logits.grad[0, 1] == 0 and logits.grad[5, 3] == 0 and logits.grad[0, 0] != 0
    # changing the masked logits changes nothing
    other = logits.detach().clone()
    other[0, 1] += 100.0
    assert loss_fn(other, with_nan) == pytest.approx(float(loss.detach()))
    # all unknown: zero loss, still differentiable
    assert float(loss_fn(logits.detach(), torch.full_like(target, math.nan))) == 0.0
    att = torch.randn(16, 5, 3, 3)
    assert float(cross_attention_loss(att, att, torch.full_like(target, math.nan))) == 0.0


def test_focusing_down_weights_easy_samples() -> None:
    target = torch.tensor([[1.0, 0.0]])
    easy, hard = torch.tensor([[4.0, -4.0]]), torch.tensor([[-1.0, 1.0]])
    f = MultiLabelBalanceLoss(gamma=2.0, pos_weight="none")
    b = MultiLabelBalanceLoss(gamma=0.0, pos_weight="none")
    assert f(easy, target) / b(easy, target) < f(hard, target) / b(hard, target) < 1


def test_attention_loss_wants_a_peak_only_where_the_finding_is() -> None:
    y = torch.tensor([[1.0, 0.0]])
    good = torch.full((1, 2, 4, 4), -6.0)
    good[0, 0, 1, 2] = 6.0  # finding 0 present: one peak in both branches; finding 1 absent: no attention
    flat = torch.zeros(1, 2, 4, 4)
    assert cross_attention_loss(good, good, y) < cross_attention_loss(flat, flat, y)
    # the peak is the max over positions of M = sigmoid(a) * sigmoid(b)
    a, b = torch.randn(3, 2, 5, 5), torch.randn(3, 2, 5, 5)
    y2 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    q = (torch.sigmoid(a) * torch.sigmoid(b)).flatten(2).amax(2)
    torch.testing.assert_close(cross_attention_loss(a, b, y2), F.binary_cross_entropy(q, y2))


def test_attention_loss_keeps_its_gradient_when_the_maps_saturate() -> None:
    a = torch.full((1, 1, 2, 2), 30.0, requires_grad=True)  # sigmoid(30) == 1 in fp32 (and bf16)
    loss = cross_attention_loss(a, a.detach(), torch.zeros(1, 1))  # absent finding, fully attended
    loss.backward()
    assert torch.isfinite(loss) and a.grad is not None and float(a.grad.abs().sum()) > 0
