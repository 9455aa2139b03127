"""The box-occlusion test and ROAD (issue 18) on a synthetic set where the lesion decides the label."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from deeppneumonia.evaluation.localization import box_mask
from deeppneumonia.evaluation.occlusion import (
    control_boxes,
    fill_regions,
    occlusion_drops,
    paired_model_difference,
    road_scores,
    summarize_occlusion,
)
from tests.conftest import lesion_image

SIZE = 32


def lesion_set(n: int, seed: int) -> tuple[Tensor, Tensor, list[tuple[int, int, int, int] | None]]:
    """(n, 1, S, S) normalised images, labels (1 = lesion), boxes: the bright box alone makes the label."""
    rng = np.random.default_rng(seed)
    imgs, labels, boxes = [], [], []
    for i in range(n):
        box = None
        if i % 2:
            w, h = (int(v) for v in rng.integers(SIZE // 5, SIZE // 3, 2))
            box = (int(rng.integers(0, SIZE - w)), int(rng.integers(0, SIZE - h)), w, h)
        imgs.append(lesion_image(rng, SIZE, box))
        labels.append(int(box is not None))
        boxes.append(box)
    x = (torch.from_numpy(np.stack(imgs)).float()[:, None] - 100.0) / 40.0
    return x, torch.tensor(labels), boxes


def tiny_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 5, padding=2), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    torch.manual_seed(0)
    x, y, _ = lesion_set(64, seed=1)
    net = tiny_model()
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


def probs_of(net: nn.Module):  # type: ignore[no-untyped-def]
    def fn(x: Tensor) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(net(x), 1).numpy()
    return fn


def test_control_boxes_same_sizes_no_overlap_seeded() -> None:
    boxes = [(2.0, 3.0, 8.0, 6.0), (20.0, 18.0, 5.0, 9.0)]
    a = control_boxes(boxes, (SIZE, SIZE), np.random.default_rng(5))
    assert a is not None and a == control_boxes(boxes, (SIZE, SIZE), np.random.default_rng(5))
    assert [(w, h) for _, _, w, h in a] == [(8.0, 6.0), (5.0, 9.0)]
    lesion = box_mask(boxes, (SIZE, SIZE))
    placed = np.zeros((SIZE, SIZE), dtype=int)
    for x, y, w, h in a:
        assert x >= 0 and x + w <= SIZE and y >= 0 and y + h <= SIZE
        placed[int(y):int(y + h), int(x):int(x + w)] += 1
    assert placed.max() == 1 and not (placed.astype(bool) & lesion).any()
    assert control_boxes([(0.0, 0.0, 30.0, 30.0)], (SIZE, SIZE), np.random.default_rng(0)) is None  # no room


@pytest.mark.parametrize("fill", ["mean", "blur"])
def test_fill_regions_changes_only_the_masked_pixels(fill: str) -> None:
    x = torch.randn(2, 1, SIZE, SIZE)
    m = torch.zeros(2, SIZE, SIZE, dtype=torch.bool)
    m[:, 4:10, 4:10] = True
    y = fill_regions(x, m, fill)
    assert torch.equal(y[:, 0][~m], x[:, 0][~m]) and not torch.equal(y, x)
    if fill == "mean":
        assert torch.allclose(y[0, 0, 5, 5], x[0].mean())
    with pytest.raises(ValueError):
        fill_regions(x, m, "zero")


def test_a_lesion_deciding_model_loses_more_when_the_lesion_is_hidden(trained: nn.Module) -> None:
    x, y, boxes = lesion_set(40, seed=7)  # held-out images
    pos = [k for k in range(len(boxes)) if boxes[k] is not None]
    items = [(1, [tuple(float(v) for v in boxes[k])]) for k in pos]  # type: ignore[union-attr]
    p = probs_of(trained)
    assert (p(x).argmax(1) == y.numpy()).mean() >= 0.9  # the tiny model learned the task
    rows = occlusion_drops(p, x[pos], items, seeds=list(range(len(pos))), fill="mean")
    assert rows == occlusion_drops(p, x[pos], items, seeds=list(range(len(pos))), fill="mean")  # seeded
    patients = [f"p{k // 2}" for k in range(len(pos))]  # two images per patient
    s = summarize_occlusion(rows, patients, n_boot=500)
    assert s["n"] == len(pos) and s["skipped"] == 0 and s["patients"] == len(pos) // 2
    assert s["difference"]["mean"] > 0.3 and s["difference"]["lo"] > 0  # CI over patients excludes 0
    assert s["drop_lesion"]["mean"] > s["drop_outside"]["mean"] and abs(s["drop_outside"]["mean"]) < 0.2
    assert s["lesion_worse_share"] >= 0.8
    # a model that ignores the image loses nothing either way; the paired model difference is then positive
    blind = probs_of(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 2)).eval())
    s0 = summarize_occlusion(occlusion_drops(lambda t: blind(torch.zeros_like(t)), x[pos], items,
                                             list(range(len(pos)))), patients, n_boot=500)
    assert s0["difference"]["mean"] == pytest.approx(0.0, abs=1e-6)
    d = paired_model_difference(s, s0, n_boot=500)
    assert d["mean"] == pytest.approx(s["difference"]["mean"]) and d["lo"] > 0


def test_road_prefers_the_lesion_map_to_its_inverse(trained: nn.Module) -> None:
    x, _, boxes = lesion_set(16, seed=3)
    pos = [k for k in range(len(boxes)) if boxes[k] is not None]
    maps = np.stack([box_mask([tuple(float(v) for v in boxes[k])], (SIZE, SIZE)).astype(np.float32)  # type: ignore[union-attr]
                     + 0.01 * np.random.default_rng(k).random((SIZE, SIZE), dtype=np.float32) for k in pos])
    good = road_scores(trained, x[pos], maps, [1] * len(pos), multilabel=False)
    bad = road_scores(trained, x[pos], 1.0 - maps, [1] * len(pos), multilabel=False)
    assert len(good) == len(pos) and all(np.isfinite(good))
    assert good == road_scores(trained, x[pos], maps, [1] * len(pos), multilabel=False)  # seeded imputation noise
    assert np.mean(good) > np.mean(bad)
