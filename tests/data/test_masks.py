from __future__ import annotations

import torch
import torch.nn.functional as F

from deeppneumonia.data.manifest import Box
from deeppneumonia.data.masks import boxes_to_mask, boxes_to_mask_tensor, pad_boxes


def test_mask_is_one_inside_zero_outside_on_pixel_grid() -> None:
    m = boxes_to_mask([Box(2, 3, 4, 2)], 10, 10, (10, 10))
    expected = torch.zeros(10, 10)
    expected[3:5, 2:6] = 1
    assert torch.equal(m, expected)
    assert torch.equal(1 - m, 1 - expected)  # mask- is the complement


def test_fractional_coverage_equals_box_area() -> None:
    box = Box(1.5, 2.25, 3.3, 4.1)
    for hw in [(7, 7), (5, 9), (16, 16)]:
        m = boxes_to_mask([box], 10, 10, hw)
        cell_area = (10 / hw[0]) * (10 / hw[1])
        assert abs(float(m.sum()) * cell_area - box.w * box.h) < 1e-4


def test_mask_at_coarse_grid_is_area_downsample_of_fine_mask() -> None:
    boxes = [Box(3, 5, 20, 11), Box(40, 40, 10, 20)]
    fine = boxes_to_mask(boxes, 64, 64, (64, 64))
    coarse = boxes_to_mask(boxes, 64, 64, (8, 8))
    pooled = F.interpolate(fine[None, None], size=(8, 8), mode="area")[0, 0]
    assert torch.allclose(coarse, pooled, atol=1e-5)


def test_mask_follows_a_resize_of_the_image() -> None:
    """Boxes in a 200x100 image; after squashing it to 50x50, scaled boxes give the same mask."""
    box = Box(20, 10, 60, 40)
    a = boxes_to_mask([box], 200, 100, (50, 50))
    b = boxes_to_mask([box.scaled(50 / 200, 50 / 100)], 50, 50, (50, 50))
    assert torch.allclose(a, b, atol=1e-6)


def test_batched_padding_and_no_box_images() -> None:
    t = pad_boxes([[Box(0, 0, 4, 4)], [], [Box(1, 1, 2, 2), Box(5, 5, 2, 2)]])
    assert t.shape == (3, 2, 4)
    masks = boxes_to_mask_tensor(t, torch.full((3, 2), 8.0), (8, 8))
    assert masks.shape == (3, 1, 8, 8)
    assert masks[0].sum() == 16 and masks[1].sum() == 0 and masks[2].sum() == 8
