"""Tests of the MGACR losses (paper Eqs. 2-6)."""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from deeppneumonia.losses import MGACRLoss, attention_losses, feature_contrastive_loss

EPS = 1e-6


def box_masks(n: int, h: int, w: int, seed: int = 0) -> Tensor:
    """(N, 1, H, W) 0/1 masks, each with one random axis-aligned box."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(n, 1, h, w)
    for i in range(n):
        y0 = int(torch.randint(0, h // 2, (1,), generator=g))
        x0 = int(torch.randint(0, w // 2, (1,), generator=g))
        y1 = y0 + int(torch.randint(1, h // 2 + 1, (1,), generator=g))
        x1 = x0 + int(torch.randint(1, w // 2 + 1, (1,), generator=g))
        mask[i, 0, y0:y1, x0:x1] = 1.0
    return mask


def naive_attention(
    map_pos: Tensor, map_neg: Tensor, mask_pos: Tensor, reduction: str
) -> tuple[float, float]:
    """Eqs. (2)-(3) with loops over samples and pixels (float64)."""
    n, _, h, w = map_pos.shape
    nums, dens, negs = [], [], []
    for i in range(n):
        num = den = neg = 0.0
        for y in range(h):
            for x in range(w):
                mp, mn, m = (
                    float(map_pos[i, 0, y, x]),
                    float(map_neg[i, 0, y, x]),
                    float(mask_pos[i, 0, y, x]),
                )
                num += (mp - m) ** 2
                den += (mp - (1 - m)) ** 2
                neg += (mn - (1 - m)) ** 2
        nums.append(num / (h * w))
        dens.append(den / (h * w))
        negs.append(neg / (h * w))
    if reduction == "sample":
        att_pos = sum(a / (b + EPS) for a, b in zip(nums, dens, strict=True)) / n
    else:
        att_pos = (sum(nums) / n) / (sum(dens) / n + EPS)
    return att_pos, sum(negs) / n


def naive_feature(feats: Tensor, map_pos: Tensor, map_neg: Tensor, reduction: str) -> float:
    """Eq. (5) with loops over samples, channels and pixels (float64)."""
    n, c, h, w = feats.shape
    nums, dens = [], []
    for i in range(n):
        num = den = 0.0
        for k in range(c):
            for y in range(h):
                for x in range(w):
                    f = float(feats[i, k, y, x])
                    num += abs(f - f * float(map_pos[i, 0, y, x]))
                    den += abs(f - f * float(map_neg[i, 0, y, x]))
        nums.append(num / (c * h * w))
        dens.append(den / (c * h * w))
    if reduction == "sample":
        return sum(a / (b + EPS) for a, b in zip(nums, dens, strict=True)) / n
    return (sum(nums) / n) / (sum(dens) / n + EPS)


def rand_maps(n: int, h: int, w: int, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, h, w, generator=g), torch.rand(n, 1, h, w, generator=g)


# --- attention_losses (Eqs. 2-3) --------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["sample", "batch"])
def test_attention_matches_naive(reduction: str) -> None:
    map_pos, map_neg = rand_maps(3, 5, 6, seed=0)
    mask = box_masks(3, 5, 6)
    att_pos, att_neg = attention_losses(map_pos, map_neg, mask, eps=EPS, reduction=reduction,  # type: ignore[arg-type]
                                        form="paper")
    ref_pos, ref_neg = naive_attention(map_pos, map_neg, mask, reduction)
    assert att_pos.item() == pytest.approx(ref_pos, rel=1e-5)
    assert att_neg.item() == pytest.approx(ref_neg, rel=1e-5)


def test_sample_and_batch_reductions_differ() -> None:
    map_pos, map_neg = rand_maps(4, 4, 4, seed=1)
    mask = box_masks(4, 4, 4, seed=1)
    for form in ("paper", "robust"):
        a = attention_losses(map_pos, map_neg, mask, reduction="sample", form=form)[0]  # type: ignore[arg-type]
        b = attention_losses(map_pos, map_neg, mask, reduction="batch", form=form)[0]  # type: ignore[arg-type]
        assert not torch.isclose(a, b)


@pytest.mark.parametrize("form", ["paper", "robust"])
def test_attention_smallest_at_the_mask(form: str) -> None:
    mask = box_masks(4, 8, 8, seed=2)
    fn = functools.partial(attention_losses, form=form)  # type: ignore[arg-type]
    ideal_pos, ideal_neg = fn(mask.clone(), 1 - mask, mask)
    assert ideal_pos.item() == pytest.approx(0.0, abs=1e-7)
    assert ideal_neg.item() == pytest.approx(0.0, abs=1e-7)
    g = torch.Generator().manual_seed(3)
    for scale in (0.05, 0.2, 0.5):
        noise = scale * torch.randn(4, 1, 8, 8, generator=g)
        pert_pos, pert_neg = fn((mask + noise).clamp(0, 1), (1 - mask - noise).clamp(0, 1), mask)
        assert pert_pos > ideal_pos
        assert pert_neg > ideal_neg
    # The inverted map is the worst case for Eq. (2).
    assert fn(1 - mask, 1 - mask, mask)[0] > fn(mask * 0.5, 1 - mask, mask)[0]


def test_attention_eps_keeps_ratio_finite() -> None:
    mask = box_masks(2, 4, 4, seed=4)
    map_pos = (1 - mask).requires_grad_(True)  # map+ == mask- exactly: the Eq. (2) denominator is 0
    att_pos, att_neg = attention_losses(map_pos, mask.clone(), mask, eps=EPS, form="paper")
    assert torch.isfinite(att_pos) and torch.isfinite(att_neg)
    assert att_pos.item() == pytest.approx(1.0 / EPS, rel=1e-4)  # MSE(mask-, mask+) = 1 per pixel
    att_pos.backward()
    assert map_pos.grad is not None and torch.isfinite(map_pos.grad).all()


def test_attention_zero_mask_is_well_defined() -> None:
    map_pos, map_neg = rand_maps(2, 4, 4, seed=5)
    zero = torch.zeros(2, 1, 4, 4)
    att_pos, _ = attention_losses(map_pos, map_neg, zero, form="paper")
    ref = (
        sum(
            float(map_pos[i].square().mean()) / (float((map_pos[i] - 1).square().mean()) + EPS)
            for i in range(2)
        )
        / 2
    )
    assert att_pos.item() == pytest.approx(ref, rel=1e-5)


def test_attention_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError):
        attention_losses(torch.rand(2, 1, 4, 4), torch.rand(2, 1, 4, 4), torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError):
        attention_losses(torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4))
    with pytest.raises(ValueError):
        m = torch.rand(2, 1, 4, 4)
        attention_losses(m, m, m, reduction="x")  # type: ignore[arg-type]


# --- feature_contrastive_loss (Eq. 5) ---------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["sample", "batch"])
def test_feature_matches_naive(reduction: str) -> None:
    g = torch.Generator().manual_seed(6)
    feats = torch.randn(3, 4, 5, 5, generator=g)
    map_pos, map_neg = rand_maps(3, 5, 5, seed=6)
    loss = feature_contrastive_loss(feats, map_pos, map_neg, eps=EPS, reduction=reduction,  # type: ignore[arg-type]
                                    form="paper")
    assert loss.item() == pytest.approx(naive_feature(feats, map_pos, map_neg, reduction), rel=1e-5)


def test_feature_eps_keeps_ratio_finite() -> None:
    feats = torch.randn(2, 3, 4, 4, requires_grad=True)
    map_pos = torch.rand(2, 1, 4, 4)
    map_neg = torch.ones(2, 1, 4, 4)  # f * map- == f: the denominator is 0
    loss = feature_contrastive_loss(feats, map_pos, map_neg, form="paper")
    assert torch.isfinite(loss)
    loss.backward()
    assert feats.grad is not None and torch.isfinite(feats.grad).all()


def test_feature_loss_prefers_map_pos_on_features() -> None:
    feats = torch.randn(2, 3, 4, 4)
    ones, zeros = torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    for form in ("paper", "robust"):
        fn = functools.partial(feature_contrastive_loss, form=form)
        assert fn(feats, ones, zeros).item() == pytest.approx(0.0, abs=1e-7)
    assert feature_contrastive_loss(feats, 0.5 * ones, 0.5 * ones, form="paper").item() == pytest.approx(1.0, rel=1e-5)
    assert feature_contrastive_loss(feats, 0.5 * ones, 0.5 * ones).item() == pytest.approx(0.5, rel=1e-5)


# --- MGACRLoss (Eqs. 2-6 over layers) ---------------------------------------------------------------


def make_layers(
    n: int, sizes: list[tuple[int, int, int]], seed: int, requires_grad: bool = False
) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    g = torch.Generator().manual_seed(seed)
    feats, maps_pos, maps_neg = [], [], []
    for c, h, w in sizes:
        feats.append(torch.randn(n, c, h, w, generator=g).requires_grad_(requires_grad))
        maps_pos.append(torch.rand(n, 1, h, w, generator=g).requires_grad_(requires_grad))
        maps_neg.append(torch.rand(n, 1, h, w, generator=g).requires_grad_(requires_grad))
    return feats, maps_pos, maps_neg


SIZES = [(4, 8, 8), (6, 4, 4)]


@pytest.mark.parametrize("form", ["paper", "robust"])
def test_mgacr_is_layer_mean_of_functions(form: str) -> None:
    n = 3
    feats, maps_pos, maps_neg = make_layers(n, SIZES, seed=7)
    mask = box_masks(n, 32, 32, seed=7)
    out = MGACRLoss(form=form)(feats, maps_pos, maps_neg, mask, torch.ones(n, dtype=torch.bool), True, True)  # type: ignore[arg-type]
    assert set(out) == {"att_pos", "att_neg", "feat"}
    ap, an, ft = [], [], []
    for f, mp, mn in zip(feats, maps_pos, maps_neg, strict=True):
        m = F.interpolate(mask, size=f.shape[-2:], mode="area")
        a, b = attention_losses(mp, mn, m, form=form)  # type: ignore[arg-type]
        ap.append(a)
        an.append(b)
        ft.append(feature_contrastive_loss(f, mp, mn, form=form))  # type: ignore[arg-type]
    torch.testing.assert_close(out["att_pos"], torch.stack(ap).mean())
    torch.testing.assert_close(out["att_neg"], torch.stack(an).mean())
    torch.testing.assert_close(out["feat"], torch.stack(ft).mean())


def test_mask_resized_with_area_fractions() -> None:
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :, :3] = 1.0  # box edge cuts the second 2x2 cell column in half
    resized = F.interpolate(mask, size=(4, 4), mode="area")
    assert resized[0, 0, 0].tolist() == [1.0, 0.5, 0.0, 0.0]
    # MGACRLoss uses exactly that soft mask: map+ equal to it gives L_att+ = 0.
    map_pos = resized.clone()
    out = MGACRLoss()([torch.randn(1, 2, 4, 4)], [map_pos], [1 - resized], mask, torch.tensor([True]))
    assert out["att_pos"].item() == pytest.approx(0.0, abs=1e-7)
    assert out["att_neg"].item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("form", ["paper", "robust"])
def test_gradient_flow_to_maps_and_features(form: str) -> None:
    n = 2
    feats, maps_pos, maps_neg = make_layers(n, SIZES, seed=8, requires_grad=True)
    mask = box_masks(n, 16, 16, seed=8)
    out = MGACRLoss(form=form)(feats, maps_pos, maps_neg, mask, torch.ones(n, dtype=torch.bool), True, True)  # type: ignore[arg-type]
    sum(out.values()).backward()
    for t in [*feats, *maps_pos, *maps_neg]:
        assert t.grad is not None
        assert torch.isfinite(t.grad).all()
        assert t.grad.abs().sum() > 0


def test_switches_give_zeros() -> None:
    n = 2
    feats, maps_pos, maps_neg = make_layers(n, SIZES, seed=9)
    mask = box_masks(n, 16, 16, seed=9)
    has_box = torch.ones(n, dtype=torch.bool)
    loss = MGACRLoss()
    only_att = loss(feats, maps_pos, maps_neg, mask, has_box, use_attention=True, use_feature=False)
    only_feat = loss(feats, maps_pos, maps_neg, mask, has_box, use_attention=False, use_feature=True)
    none = loss(feats, maps_pos, maps_neg, mask, has_box, use_attention=False, use_feature=False)
    assert only_att["feat"].item() == 0.0 and only_att["att_pos"].item() > 0
    assert only_feat["att_pos"].item() == 0.0 and only_feat["att_neg"].item() == 0.0
    assert only_feat["feat"].item() > 0
    assert all(v.item() == 0.0 for v in none.values())


@pytest.mark.parametrize("form", ["paper", "robust"])
def test_skip_vs_zero_mask(form: str) -> None:
    n = 3
    feats, maps_pos, maps_neg = make_layers(n, SIZES, seed=10)
    mask = box_masks(n, 16, 16, seed=10)  # sample 1 still has a box in mask_pos: has_box must win
    has_box = torch.tensor([True, False, True])
    loss = MGACRLoss(form=form)  # type: ignore[arg-type]

    skip = loss(feats, maps_pos, maps_neg, mask, has_box, True, True, no_box="skip")
    keep = torch.tensor([0, 2])
    ref_skip = loss(
        [f[keep] for f in feats],
        [m[keep] for m in maps_pos],
        [m[keep] for m in maps_neg],
        mask[keep],
        torch.ones(2, dtype=torch.bool),
        True,
        True,
    )
    for k in ref_skip:
        torch.testing.assert_close(skip[k], ref_skip[k])

    zero = loss(feats, maps_pos, maps_neg, mask, has_box, True, True, no_box="zero_mask")
    zeroed = mask.clone()
    zeroed[1] = 0.0
    ref_has = torch.ones(n, dtype=torch.bool) if form == "paper" else has_box  # robust Eq. (5): boxed images only
    ref_zero = loss(feats, maps_pos, maps_neg, zeroed, ref_has, True, True)
    for k in ref_zero:
        torch.testing.assert_close(zero[k], ref_zero[k])
    assert not torch.isclose(skip["att_pos"], zero["att_pos"])
    if form == "paper":  # Eq. (5) does not use the mask: both policies agree only if nothing is skipped
        assert not torch.isclose(skip["feat"], zero["feat"])
    else:  # the robust Eq. (5) runs on boxed images only, whatever the policy
        torch.testing.assert_close(skip["feat"], zero["feat"])


def test_skip_without_any_box_is_zero_with_grad() -> None:
    n = 2
    feats, maps_pos, maps_neg = make_layers(n, SIZES, seed=11, requires_grad=True)
    mask = torch.zeros(n, 1, 16, 16)
    out = MGACRLoss()(feats, maps_pos, maps_neg, mask, torch.zeros(n, dtype=torch.bool), True, True, "skip")
    for v in out.values():
        assert v.item() == 0.0
        assert v.grad_fn is not None
    sum(out.values()).backward()
    for t in [*feats, *maps_pos, *maps_neg]:
        assert t.grad is not None and torch.all(t.grad == 0)


def test_bf16_autocast_gives_finite_fp32() -> None:
    n = 2
    g = torch.Generator().manual_seed(12)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    att = nn.Conv2d(4, 2, 1)
    x = torch.randn(n, 3, 8, 8, generator=g)
    mask = box_masks(n, 16, 16, seed=12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f = conv(x)
        maps = torch.sigmoid(att(f))
        assert f.dtype == torch.bfloat16
        out = MGACRLoss()(
            [f], [maps[:, :1]], [maps[:, 1:]], mask, torch.ones(n, dtype=torch.bool), True, True
        )
        a, b = attention_losses(maps[:, :1], maps[:, 1:], F.interpolate(mask, size=(8, 8), mode="area"))
        c = feature_contrastive_loss(f, maps[:, :1], maps[:, 1:])
    for v in [*out.values(), a, b, c]:
        assert v.dtype == torch.float32
        assert torch.isfinite(v)
    sum(out.values()).backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()
    assert att.weight.grad is not None and torch.isfinite(att.weight.grad).all()


def test_mgacr_bad_arguments_raise() -> None:
    n = 2
    feats, maps_pos, maps_neg = make_layers(n, SIZES, seed=13)
    mask = box_masks(n, 16, 16)
    has_box = torch.ones(n, dtype=torch.bool)
    with pytest.raises(ValueError):
        MGACRLoss()(feats, maps_pos[:1], maps_neg, mask, has_box)
    with pytest.raises(ValueError):
        MGACRLoss()(feats, maps_pos, maps_neg, mask, has_box, no_box="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        MGACRLoss()(feats, maps_neg[::-1], maps_neg, mask, has_box)
    with pytest.raises(ValueError):
        MGACRLoss(eps=0.0)
    assert math.isfinite(MGACRLoss().eps)


# --- the robust (default) form against naive references ---------------------------------------------


def naive_robust_attention(map_pos: Tensor, mask_pos: Tensor, reduction: str) -> float:
    """Bounded Eq. (2), ``a / (a + b + eps)``, with loops (float64)."""
    n, _, h, w = map_pos.shape
    nums, dens = [], []
    for i in range(n):
        a = b = 0.0
        for y in range(h):
            for x in range(w):
                p, m = float(map_pos[i, 0, y, x]), float(mask_pos[i, 0, y, x])
                a += (p - m) ** 2
                b += (p - (1 - m)) ** 2
        nums.append(a / (h * w))
        dens.append(b / (h * w))
    if reduction == "sample":
        return sum(a / (a + b + EPS) for a, b in zip(nums, dens, strict=True)) / n
    return (sum(nums) / n) / (sum(nums) / n + sum(dens) / n + EPS)


def naive_robust_feature(feats: Tensor, map_pos: Tensor, map_neg: Tensor, reduction: str) -> float:
    """Robust Eq. (5), ``A / (A + B + eps * mean|f|)``, with loops (float64)."""
    n, c, h, w = feats.shape
    nums, dens, scales = [], [], []
    for i in range(n):
        a = b = s = 0.0
        for k in range(c):
            for y in range(h):
                for x in range(w):
                    f = float(feats[i, k, y, x])
                    a += abs(f) * (1 - float(map_pos[i, 0, y, x]))
                    b += abs(f) * (1 - float(map_neg[i, 0, y, x]))
                    s += abs(f)
        nums.append(a / (c * h * w))
        dens.append(b / (c * h * w))
        scales.append(s / (c * h * w))
    if reduction == "sample":
        return sum(a / (a + b + EPS * s) for a, b, s in zip(nums, dens, scales, strict=True)) / n
    return (sum(nums) / n) / (sum(nums) / n + sum(dens) / n + EPS * sum(scales) / n)


@pytest.mark.parametrize("reduction", ["sample", "batch"])
def test_robust_forms_match_naive(reduction: str) -> None:
    map_pos, map_neg = rand_maps(3, 5, 6, seed=20)
    mask = box_masks(3, 5, 6, seed=20)
    att_pos, att_neg = attention_losses(map_pos, map_neg, mask, eps=EPS, reduction=reduction)  # type: ignore[arg-type]
    assert att_pos.item() == pytest.approx(naive_robust_attention(map_pos, mask, reduction), rel=1e-5)
    assert att_neg.item() == pytest.approx(naive_attention(map_pos, map_neg, mask, reduction)[1], rel=1e-5)
    feats = torch.randn(3, 4, 5, 6, generator=torch.Generator().manual_seed(20))
    feat = feature_contrastive_loss(feats, map_pos, map_neg, eps=EPS, reduction=reduction)  # type: ignore[arg-type]
    assert feat.item() == pytest.approx(naive_robust_feature(feats, map_pos, map_neg, reduction), rel=1e-5)


# --- why the literal Eq. (5) is ill-posed: the issue's numbers, recomputed ---------------------------

GRID = 8
CLIP = 1e-3  # a sigmoid never reaches 0 or 1: "correct" and "trivial" maps are clipped to [0.001, 0.999]


def issue_mask() -> Tensor:
    """(1, 1, 8, 8) mask with a 14-cell box (2 x 7), 22 % of the grid."""
    mask = torch.zeros(1, 1, GRID, GRID)
    mask[..., 3:5, 1:8] = 1.0
    return mask


def paper_feat(map_pos: Tensor, map_neg: Tensor) -> float:
    feats = torch.ones(1, 4, GRID, GRID)  # uniform features
    return feature_contrastive_loss(feats, map_pos, map_neg, form="paper").item()


def test_literal_eq5_numbers() -> None:
    mask = issue_mask()
    half = torch.full_like(mask, 0.5)
    correct_pos, correct_neg = mask.clamp(CLIP, 1 - CLIP), (1 - mask).clamp(CLIP, 1 - CLIP)
    trivial_pos, trivial_neg = torch.full_like(mask, 1 - CLIP), torch.full_like(mask, CLIP)
    assert paper_feat(half, half) == pytest.approx(1.00, abs=5e-3)
    assert paper_feat(correct_pos, correct_neg) == pytest.approx(3.56, abs=5e-3)  # the correct maps cost most
    assert paper_feat(trivial_pos, trivial_neg) == pytest.approx(0.001, abs=5e-4)  # the trivial maps cost least
    # an all-zero mask: the correct maps (map+ = 0, map- = 1) give ~1000
    assert paper_feat(torch.full_like(mask, CLIP), torch.full_like(mask, 1 - CLIP)) == pytest.approx(999, rel=1e-3)


def test_literal_eq5_outpulls_eq3_near_the_target() -> None:
    """Zero-mask image, map+ = 0.1 and map- = 0.9: dL_feat/dmap- ~ +90 vs dL_att-/dmap- = -0.2 (per cell x H*W)."""
    zero = torch.zeros(1, 1, GRID, GRID)
    map_pos = torch.full_like(zero, 0.1)
    map_neg = torch.full_like(zero, 0.9).requires_grad_(True)
    feats = torch.ones(1, 4, GRID, GRID)
    g_feat = torch.autograd.grad(feature_contrastive_loss(feats, map_pos, map_neg, form="paper"), map_neg)[0]
    g_att = torch.autograd.grad(attention_losses(map_pos, map_neg, zero, form="paper")[1], map_neg)[0]
    cells = GRID * GRID
    assert float(g_feat[0, 0, 0, 0]) * cells == pytest.approx(90.0, rel=1e-3)
    assert float(g_att[0, 0, 0, 0]) * cells == pytest.approx(-0.2, rel=1e-3)
    assert -float(g_feat[0, 0, 0, 0] / g_att[0, 0, 0, 0]) == pytest.approx(450.0, rel=1e-3)
    # the robust form on the same image: Eq. (5) is not computed (no box), and never sends gradient to the maps
    out = MGACRLoss()([feats], [map_pos], [map_neg], zero, torch.tensor([False]), no_box="zero_mask")
    assert out["feat"].item() == 0.0


def fit_maps(form: str, mask: Tensor, has_box: bool, steps: int = 300) -> tuple[Tensor, Tensor]:
    """Minimise L_att+ + L_att- + L_feat over free maps (sigmoid of logits) with fixed uniform features."""
    z_pos = torch.zeros_like(mask, requires_grad=True)
    z_neg = torch.zeros_like(mask, requires_grad=True)
    feats = torch.ones(1, 4, *mask.shape[-2:])
    loss = MGACRLoss(form=form)  # type: ignore[arg-type]
    opt = torch.optim.Adam([z_pos, z_neg], lr=0.1)
    for _ in range(steps):
        out = loss([feats], [torch.sigmoid(z_pos)], [torch.sigmoid(z_neg)], mask, torch.tensor([has_box]),
                   no_box="zero_mask")
        opt.zero_grad()
        sum(out.values()).backward()
        opt.step()
    return torch.sigmoid(z_pos).detach(), torch.sigmoid(z_neg).detach()


@pytest.mark.parametrize("has_box", [True, False])
def test_minimum_at_the_correct_maps_only_in_the_robust_form(has_box: bool) -> None:
    mask = issue_mask() if has_box else torch.zeros(1, 1, GRID, GRID)
    map_pos, map_neg = fit_maps("robust", mask, has_box)
    assert (map_pos - mask).abs().max() < 0.1 and (map_neg - (1 - mask)).abs().max() < 0.1
    map_pos, map_neg = fit_maps("paper", mask, has_box)
    assert (map_neg - (1 - mask)).abs().max() > 0.5  # Eq. (5) drags map- away from mask-


def test_robust_feature_term_moves_features_not_maps() -> None:
    feats, maps_pos, maps_neg = make_layers(2, [(4, 8, 8)], seed=21, requires_grad=True)
    mask = box_masks(2, 8, 8, seed=21)
    out = MGACRLoss()(feats, maps_pos, maps_neg, mask, torch.ones(2, dtype=torch.bool), use_attention=False)
    out["feat"].backward()
    assert maps_pos[0].grad is None and maps_neg[0].grad is None
    assert feats[0].grad is not None and feats[0].grad.abs().sum() > 0
    # with the masks as targets its minimum is "all feature mass inside the boxes"
    loss = MGACRLoss(feature_target="masks")
    f_in = mask.expand(2, 4, 8, 8).clone()
    f_out = (1 - mask).expand(2, 4, 8, 8).clone()
    has_box = torch.ones(2, dtype=torch.bool)
    inside = loss([f_in], maps_pos, maps_neg, mask, has_box, use_attention=False)["feat"]
    outside = loss([f_out], maps_pos, maps_neg, mask, has_box, use_attention=False)["feat"]
    assert inside.item() == pytest.approx(0.0) and outside.item() == pytest.approx(1.0, abs=1e-5)


def test_robust_feature_term_is_scale_invariant_and_eps_cannot_dominate() -> None:
    g = torch.Generator().manual_seed(22)
    feats = torch.randn(2, 4, 8, 8, generator=g)
    map_pos, map_neg = rand_maps(2, 8, 8, seed=22)
    ref = feature_contrastive_loss(feats, map_pos, map_neg)
    for scale in (1e-8, 1e-3, 1e3):
        torch.testing.assert_close(feature_contrastive_loss(feats * scale, map_pos, map_neg), ref)
    # the paper's absolute eps lets tiny features reach a near-zero loss
    assert feature_contrastive_loss(feats * 1e-8, map_pos, map_neg, form="paper") < 0.1 * ref
    zero_feats = torch.zeros(2, 4, 8, 8, requires_grad=True)
    loss = feature_contrastive_loss(zero_feats, map_pos, map_neg)
    loss.backward()
    assert loss.item() == 0.0 and zero_feats.grad is not None and torch.isfinite(zero_feats.grad).all()


def test_robust_gradients_finite_at_the_edges() -> None:
    mask = box_masks(2, 8, 8, seed=23)
    map_pos = (1 - mask).requires_grad_(True)  # map+ == mask-: the paper's Eq. (2) explodes here
    map_neg = torch.ones(2, 1, 8, 8, requires_grad=True)  # map- == 1: the paper's Eq. (5) denominator is 0
    feats = torch.randn(2, 4, 8, 8, requires_grad=True)
    out = MGACRLoss()([feats], [map_pos], [map_neg], mask, torch.ones(2, dtype=torch.bool))
    assert out["att_pos"].item() == pytest.approx(1.0, abs=1e-5)  # bounded: the worst map costs 1, not 1/eps
    sum(out.values()).backward()
    for t in (map_pos, map_neg, feats):
        assert t.grad is not None and torch.isfinite(t.grad).all()
    assert map_pos.grad is not None and map_pos.grad.abs().max() < 10


@pytest.mark.parametrize("form", ["paper", "robust"])
def test_all_zero_masks_are_handled(form: str) -> None:
    n = 3
    feats, maps_pos, maps_neg = make_layers(n, SIZES, seed=24, requires_grad=True)
    zero = torch.zeros(n, 1, 16, 16)
    out = MGACRLoss(form=form)(feats, maps_pos, maps_neg, zero, torch.zeros(n, dtype=torch.bool),  # type: ignore[arg-type]
                               no_box="by_class", negative=torch.ones(n, dtype=torch.bool))
    assert all(torch.isfinite(v) for v in out.values())
    assert out["att_pos"].item() > 0 and out["att_neg"].item() > 0
    if form == "robust":
        assert out["feat"].item() == 0.0 and out["feat"].grad_fn is not None  # no boxed image: no Eq. (5)
    sum(out.values()).backward()
    for t in [*feats, *maps_pos, *maps_neg]:
        assert t.grad is not None and torch.isfinite(t.grad).all()


# --- box policy by class -----------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["paper", "robust"])
def test_by_class_policy(form: str) -> None:
    n = 4
    feats, maps_pos, maps_neg = make_layers(n, SIZES, seed=25)
    mask = box_masks(n, 16, 16, seed=25)
    has_box = torch.tensor([True, False, False, True])
    negative = torch.tensor([False, True, False, False])  # 1: negative, no box; 2: positive, no box
    loss = MGACRLoss(form=form)  # type: ignore[arg-type]
    out = loss(feats, maps_pos, maps_neg, mask, has_box, no_box="by_class", negative=negative)
    keep = torch.tensor([0, 1, 3])  # image 2 (positive, no box) is left out; image 1 gets mask+ = 0
    ref_mask = mask[keep].clone()
    ref_mask[1] = 0.0
    ref = loss([f[keep] for f in feats], [m[keep] for m in maps_pos], [m[keep] for m in maps_neg], ref_mask,
               has_box[keep], no_box="zero_mask")
    for k in ("att_pos", "att_neg"):
        torch.testing.assert_close(out[k], ref[k])
    boxed = torch.tensor([0, 3])
    feat_keep = keep if form == "paper" else boxed
    ref_feat = loss([f[feat_keep] for f in feats], [m[feat_keep] for m in maps_pos],
                    [m[feat_keep] for m in maps_neg], ref_mask if form == "paper" else mask[boxed],
                    has_box[feat_keep], no_box="zero_mask")
    torch.testing.assert_close(out["feat"], ref_feat["feat"])
    with pytest.raises(ValueError, match="negative"):
        loss(feats, maps_pos, maps_neg, mask, has_box, no_box="by_class")
