"""Tests of the class-balanced weights and the class-balanced focal loss (paper Eqs. 7-9)."""

from __future__ import annotations

import logging
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deeppneumonia.losses import ClassBalancedFocalLoss, class_balanced_weights


def naive_weights(counts: list[int], beta: float) -> list[float]:
    w = [(1 - beta) / (1 - beta**n) for n in counts]
    s = sum(w)
    return [len(counts) * x / s for x in w]


def naive_softmax_focal(logits: Tensor, target: Tensor, w: list[float], gamma: float) -> float:
    """Eq. (9) with a loop over samples and classes (float64)."""
    total = 0.0
    rows = logits.double().tolist()
    for row, y in zip(rows, target.tolist(), strict=True):
        den = sum(math.exp(v) for v in row)
        p_t = math.exp(row[y]) / den
        total += -w[y] * (1 - p_t) ** gamma * math.log(p_t)
    return total / len(rows)


def naive_sigmoid_focal(logits: Tensor, target: Tensor, w: list[float], gamma: float) -> float:
    """Lin et al.'s sigmoid focal loss weighted per class, mean over the known (non-NaN) elements."""
    total, known = 0.0, 0
    for row, trow in zip(logits.double().tolist(), target.double().tolist(), strict=True):
        for c, (x, y) in enumerate(zip(row, trow, strict=True)):
            if math.isnan(y):
                continue
            p = 1 / (1 + math.exp(-x))
            total += -w[c] * (y * (1 - p) ** gamma * math.log(p) + (1 - y) * p**gamma * math.log(1 - p))
            known += 1
    return total / known


# --- class-balanced weights -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("beta", "expected"),
    [
        # w = (1-b)/(1-b^n): b=0.9 -> [0.153534, 0.100003]; b=0.99 -> [0.104583, 0.015774]; then * 2 / sum
        (0.9, [1.2111384574031807, 0.7888615425968192]),
        (0.99, [1.7378842808161672, 0.26211571918383275]),
    ],
)
def test_weights_hand_computed(beta: float, expected: list[float]) -> None:
    w = class_balanced_weights([10, 100], beta)
    assert w.dtype == torch.float32
    torch.testing.assert_close(w, torch.tensor(expected))
    assert w.sum().item() == pytest.approx(2.0)


def test_weights_beta_zero_are_ones_and_tensor_input() -> None:
    torch.testing.assert_close(class_balanced_weights(torch.tensor([5, 50, 500]), 0.0), torch.ones(3))


def test_weights_paper_beta_sum_to_num_classes() -> None:
    counts = [20672, 6012, 9555, 1, 37]
    w = class_balanced_weights(counts, 0.9999)
    torch.testing.assert_close(w, torch.tensor(naive_weights(counts, 0.9999)))
    assert w.sum().item() == pytest.approx(len(counts), rel=1e-6)
    assert torch.all(w[1:3] > w[0])


def test_weights_zero_count_gets_max_weight_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="deeppneumonia.losses.focal"):
        w = class_balanced_weights([10, 0, 100], 0.9)
    assert "no training sample" in caplog.text
    assert torch.isfinite(w).all()
    assert w[1] == w[0] == w.max()
    assert w.sum().item() == pytest.approx(3.0)


def test_weights_bad_input_raises() -> None:
    with pytest.raises(ValueError):
        class_balanced_weights([1, 2], 1.0)
    with pytest.raises(ValueError):
        class_balanced_weights([1, -2], 0.9)
    with pytest.raises(ValueError):
        class_balanced_weights([], 0.9)


# --- softmax mode -----------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
@pytest.mark.parametrize("beta", [0.0, 0.99])
def test_softmax_matches_naive(gamma: float, beta: float) -> None:
    g = torch.Generator().manual_seed(0)
    counts = [50, 5, 500, 20]
    logits = 3 * torch.randn(12, 4, generator=g)
    target = torch.randint(0, 4, (12,), generator=g)
    loss = ClassBalancedFocalLoss(counts, beta=beta, gamma=gamma)(logits, target)
    ref = naive_softmax_focal(logits, target, naive_weights(counts, beta), gamma)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(ref, rel=1e-5, abs=1e-7)


def test_softmax_gamma0_beta0_is_cross_entropy() -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(9, 3, generator=g, requires_grad=True)
    target = torch.randint(0, 3, (9,), generator=g)
    loss = ClassBalancedFocalLoss([3, 30, 300], beta=0.0, gamma=0.0)(logits, target)
    ref = F.cross_entropy(logits, target)
    torch.testing.assert_close(loss, ref)
    (g1,) = torch.autograd.grad(loss, logits)
    (g2,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(g1, g2)


def test_softmax_focusing_downweights_easy_examples() -> None:
    logits = torch.tensor([[4.0, 0.0], [0.0, 0.5]])
    target = torch.tensor([0, 0])
    per_ce = F.cross_entropy(logits, target, reduction="none")
    fl = ClassBalancedFocalLoss([1, 1], beta=0.0, gamma=2.0)
    easy = fl(logits[:1], target[:1]) / per_ce[0]
    hard = fl(logits[1:], target[1:]) / per_ce[1]
    assert easy < hard < 1.0


@pytest.mark.parametrize("gamma", [0.5, 2.0])
def test_softmax_saturated_logits_are_finite(gamma: float) -> None:
    logits = torch.tensor([[200.0, -200.0, 0.0], [-50.0, 60.0, 0.0]], requires_grad=True)
    target = torch.tensor([0, 0])
    loss = ClassBalancedFocalLoss([1, 2, 3], beta=0.9, gamma=gamma)(logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_weights_are_a_buffer() -> None:
    fl = ClassBalancedFocalLoss([1, 10], beta=0.9)
    assert "weights" in dict(fl.named_buffers())
    assert "weights" in fl.state_dict()
    assert list(fl.parameters()) == []


# --- sigmoid mode -----------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_sigmoid_matches_naive(gamma: float) -> None:
    g = torch.Generator().manual_seed(2)
    counts = [40, 4, 400]
    logits = 3 * torch.randn(7, 3, generator=g)
    target = (torch.rand(7, 3, generator=g) > 0.5).float()
    target[torch.rand(7, 3, generator=g) < 0.3] = float("nan")
    loss = ClassBalancedFocalLoss(counts, beta=0.99, gamma=gamma, mode="sigmoid")(logits, target)
    ref = naive_sigmoid_focal(logits, target, naive_weights(counts, 0.99), gamma)
    assert loss.item() == pytest.approx(ref, rel=1e-5, abs=1e-7)


def test_sigmoid_gamma0_beta0_is_bce() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(8, 5, generator=g, requires_grad=True)
    target = (torch.rand(8, 5, generator=g) > 0.5).float()
    loss = ClassBalancedFocalLoss([1, 2, 3, 4, 5], beta=0.0, gamma=0.0, mode="sigmoid")(logits, target)
    ref = F.binary_cross_entropy_with_logits(logits, target)
    torch.testing.assert_close(loss, ref)
    (g1,) = torch.autograd.grad(loss, logits)
    (g2,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(g1, g2)


def test_sigmoid_nan_targets_contribute_nothing() -> None:
    g = torch.Generator().manual_seed(4)
    counts = [10, 100, 1000, 3]
    logits = torch.randn(6, 4, generator=g, requires_grad=True)
    target = (torch.rand(6, 4, generator=g) > 0.5).float()
    unknown = torch.rand(6, 4, generator=g) < 0.4
    target[unknown] = float("nan")
    fl = ClassBalancedFocalLoss(counts, beta=0.99, gamma=2.0, mode="sigmoid")
    loss = fl(logits, target)
    (grad,) = torch.autograd.grad(loss, logits)

    # Reference: the same formula on the known entries only, element by element.
    w = fl.weights
    terms = []
    for i, c in (~unknown).nonzero().tolist():
        x, y = logits[i, c], target[i, c]
        p = torch.sigmoid(x)
        terms.append(-w[c] * (y * (1 - p) ** 2 * torch.log(p) + (1 - y) * p**2 * torch.log(1 - p)))
    ref = torch.stack(terms).mean()
    (ref_grad,) = torch.autograd.grad(ref, logits)

    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(grad, ref_grad)
    assert torch.all(grad[unknown] == 0)


def test_sigmoid_all_unknown_is_zero_with_grad() -> None:
    logits = torch.randn(3, 2, requires_grad=True)
    target = torch.full((3, 2), float("nan"))
    loss = ClassBalancedFocalLoss([1, 1], mode="sigmoid")(logits, target)
    assert loss.item() == 0.0
    assert loss.grad_fn is not None
    loss.backward()
    assert logits.grad is not None and torch.all(logits.grad == 0)


def test_sigmoid_extreme_logits_are_finite() -> None:
    logits = torch.tensor([[120.0, -120.0], [-120.0, 120.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    loss = ClassBalancedFocalLoss([1, 1], gamma=0.5, mode="sigmoid")(logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


# --- both modes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["softmax", "sigmoid"])
def test_bf16_autocast_gives_finite_fp32(mode: str) -> None:
    g = torch.Generator().manual_seed(5)
    head = nn.Linear(6, 3)
    x = torch.randn(5, 6, generator=g)
    if mode == "softmax":
        target = torch.randint(0, 3, (5,), generator=g)
    else:
        target = (torch.rand(5, 3, generator=g) > 0.5).float()
        target[0, 0] = float("nan")
    fl = ClassBalancedFocalLoss([5, 50, 500], mode=mode)  # type: ignore[arg-type]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(x)
        assert logits.dtype == torch.bfloat16
        loss = fl(logits, target)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert head.weight.grad is not None and torch.isfinite(head.weight.grad).all()


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError):
        ClassBalancedFocalLoss([1, 2], mode="softmaxx")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ClassBalancedFocalLoss([1, 2], gamma=-1.0)
    fl = ClassBalancedFocalLoss([1, 2])
    with pytest.raises(ValueError):
        fl(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError):
        fl(torch.randn(4, 2), torch.zeros(4))


def test_label_smoothing_at_gamma_0_beta_0_is_smoothed_cross_entropy() -> None:
    torch.manual_seed(0)
    logits, target = torch.randn(16, 4, requires_grad=True), torch.randint(0, 4, (16,))
    loss = ClassBalancedFocalLoss([10, 20, 30, 40], beta=0.0, gamma=0.0, label_smoothing=0.1)(logits, target)
    assert torch.allclose(loss, F.cross_entropy(logits, target, label_smoothing=0.1), atol=1e-6)
    e, c = 0.1, 4  # the formula: -sum_c q_c log p_c with q = (1 - e) onehot + e / C
    q = torch.full((16, c), e / c).scatter_(1, target[:, None], 1 - e + e / c)
    assert torch.allclose(loss, -(q * F.log_softmax(logits, 1)).sum(1).mean(), atol=1e-6)


def test_label_smoothing_composes_with_the_class_balanced_focal_loss() -> None:
    torch.manual_seed(1)
    logits, target = torch.randn(32, 3), torch.randint(0, 3, (32,))
    counts = [5, 50, 500]
    fl = ClassBalancedFocalLoss(counts, beta=0.99, gamma=2.0, label_smoothing=0.2)
    p = F.softmax(logits, 1)
    q = torch.full((32, 3), 0.2 / 3).scatter_(1, target[:, None], 0.8 + 0.2 / 3)
    want = (fl.weights[target] * -(q * (1 - p) ** 2 * p.log()).sum(1)).mean()
    assert torch.allclose(fl(logits, target), want, atol=1e-5)
    plain = ClassBalancedFocalLoss(counts, beta=0.99, gamma=2.0)
    assert torch.equal(ClassBalancedFocalLoss(counts, beta=0.99, gamma=2.0, label_smoothing=0.0)(logits, target),
                       plain(logits, target))
    big = torch.tensor([[80.0, -80.0, 0.0]], requires_grad=True)  # p_t rounds to 1: still finite
    out = fl(big, torch.tensor([0]))
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(big.grad).all()
