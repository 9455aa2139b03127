"""Localization scoring of heatmaps against lesion boxes (T(IoU), pointing game, energy, mask IoU)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from deeppneumonia.data.manifest import Box as LBox
from deeppneumonia.evaluation.localization import (
    IOU_THRESHOLDS,
    box_iou,
    box_mask,
    boxes_by_class,
    energy_inside,
    heatmap_boxes,
    localization_scores,
    mask_iou,
    patient_bootstrap_mean,
    pointing_hit,
    pointing_score,
    summarize_localization,
)
from deeppneumonia.evaluation.references import centre_prior_map, feature_grid, oracle_heatmap, reference_scores

TIOU_KEYS = [f"tiou@{t:g}" for t in IOU_THRESHOLDS]


def gaussian(shape: tuple[int, int], cx: float, cy: float, sigma: float) -> np.ndarray:
    """(H, W) Gaussian blob centred at (cx, cy) in x/y pixel coordinates (pixel centres at +0.5)."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]] + 0.5
    return np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))


def test_iou_thresholds_and_keys() -> None:
    assert IOU_THRESHOLDS == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    assert TIOU_KEYS[0] == "tiou@0.1" and TIOU_KEYS[-1] == "tiou@0.7"


def test_box_mask_hand_made() -> None:
    expected = np.zeros((5, 6), dtype=bool)
    expected[1:3, 2:5] = True  # box (2, 1, 3, 2): columns 2..4, rows 1..2
    expected[4, 0] = True  # box (0, 4, 1, 1)
    got = box_mask([(2.0, 1.0, 3.0, 2.0), (0.0, 4.0, 1.0, 1.0)], (5, 6))
    assert got.dtype == bool and got.shape == (5, 6)
    np.testing.assert_array_equal(got, expected)


def test_box_mask_pixel_centre_rule_and_padding() -> None:
    # (0.6, 0.4, 1.0, 1.2): centres x in [0.6, 1.6) -> column 1 only; y in [0.4, 1.6) -> rows 0, 1.
    expected = np.zeros((3, 3), dtype=bool)
    expected[0:2, 1] = True
    np.testing.assert_array_equal(box_mask([(0.6, 0.4, 1.0, 1.2)], (3, 3)), expected)
    # zero-size (padding) boxes and boxes outside the grid add nothing
    assert not box_mask([(1.0, 1.0, 0.0, 2.0), (10.0, 10.0, 2.0, 2.0)], (3, 3)).any()
    assert not box_mask([], (3, 3)).any()


def test_heatmap_boxes_two_separated_blobs() -> None:
    hm = np.zeros((20, 30))
    hm[2:6, 3:10] = 1.0  # box (3, 2, 7, 4)
    hm[12:18, 20:25] = 0.8  # box (20, 12, 5, 6)
    hm[13, 21] = 0.3  # below threshold inside the blob: bounding box unchanged
    boxes = heatmap_boxes(hm, threshold=0.5)
    assert sorted(boxes) == [(3.0, 2.0, 7.0, 4.0), (20.0, 12.0, 5.0, 6.0)]
    assert all(isinstance(v, float) for b in boxes for v in b)
    # round trip: box_mask of the boxes covers exactly the blobs' rectangles
    expected = np.zeros(hm.shape, dtype=bool)
    expected[2:6, 3:10] = expected[12:18, 20:25] = True
    np.testing.assert_array_equal(box_mask(boxes, (20, 30)), expected)


def test_heatmap_boxes_min_area_threshold_and_connectivity() -> None:
    hm = np.zeros((10, 10))
    hm[1:4, 1:4] = 1.0
    hm[8, 8] = 1.0  # single pixel
    assert len(heatmap_boxes(hm)) == 2
    assert heatmap_boxes(hm, min_area=2) == [(1.0, 1.0, 3.0, 3.0)]
    # diagonal neighbours are one component (8-connectivity)
    diag = np.eye(4)
    assert heatmap_boxes(diag) == [(0.0, 0.0, 4.0, 4.0)]
    # the threshold applies to the min-max normalised map: scaling and shifting change nothing
    assert heatmap_boxes(hm * 7.0 - 3.0) == heatmap_boxes(hm)


def test_box_iou_hand_values() -> None:
    a = (0.0, 0.0, 4.0, 4.0)
    assert box_iou(a, a) == 1.0
    assert box_iou(a, (10.0, 10.0, 2.0, 2.0)) == 0.0
    assert box_iou(a, (4.0, 0.0, 4.0, 4.0)) == 0.0  # touching edges
    assert box_iou(a, (2.0, 0.0, 4.0, 4.0)) == pytest.approx(1 / 3)  # half overlap: 8 / (16 + 16 - 8)
    assert box_iou(a, (1.0, 1.0, 2.0, 2.0)) == pytest.approx(4 / 16)  # nested
    assert box_iou(a, (1.0, 1.0, 0.0, 2.0)) == 0.0  # degenerate box
    assert box_iou((0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0)) == 0.0


GT = [(20.0, 20.0, 16.0, 16.0)]


def test_blob_inside_box_scores_well() -> None:
    hm = gaussian((64, 64), cx=28.0, cy=28.0, sigma=4.0)
    assert pointing_hit(hm, GT)
    assert energy_inside(hm, GT) > 0.9
    s = localization_scores(hm, GT)
    assert s["pointing"] == 1.0
    assert s["energy"] > 0.9
    for k in ("tiou@0.1", "tiou@0.2", "tiou@0.3"):
        assert s[k] == 1.0
    assert 0.0 < s["mask_iou"] <= 1.0
    assert s["max_box_iou"] >= 0.3
    # tiou@t is monotone non-increasing in t and equals max_box_iou >= t
    vals = [s[k] for k in TIOU_KEYS]
    assert vals == sorted(vals, reverse=True)
    assert vals == [float(s["max_box_iou"] >= t) for t in IOU_THRESHOLDS]


def test_blob_away_from_box_scores_badly() -> None:
    hm = gaussian((64, 64), cx=52.0, cy=52.0, sigma=4.0)
    s = localization_scores(hm, GT)
    assert s["pointing"] == 0.0
    assert all(s[k] == 0.0 for k in TIOU_KEYS)
    assert s["max_box_iou"] == 0.0
    assert s["mask_iou"] == 0.0
    assert s["energy"] < 0.05


def test_tolerance_turns_near_miss_into_hit() -> None:
    # maximum at pixel (row 28, column 39): centre (39.5, 28.5), 3.5 px right of the box's right edge (x = 36)
    hm = gaussian((64, 64), cx=39.5, cy=28.5, sigma=3.0)
    assert not pointing_hit(hm, GT)
    assert not pointing_hit(hm, GT, tolerance_px=3.0)
    assert pointing_hit(hm, GT, tolerance_px=3.5)
    assert pointing_hit(hm, GT, tolerance_px=15.0)
    # diagonal distance uses the Euclidean distance to the rectangle: centre (39.5, 39.5) is 3.5*sqrt(2) away
    corner = gaussian((64, 64), cx=39.5, cy=39.5, sigma=3.0)
    assert not pointing_hit(corner, GT, tolerance_px=4.0)
    assert pointing_hit(corner, GT, tolerance_px=5.0)


def test_pointing_without_boxes_is_miss() -> None:
    hm = gaussian((16, 16), 8.0, 8.0, 2.0)
    assert not pointing_hit(hm, [])
    assert energy_inside(hm, []) == 0.0
    assert mask_iou(hm, []) == 0.0


@pytest.mark.parametrize("value", [0.0, 3.7, -2.0])
def test_constant_heatmap_documented_behaviour(value: float) -> None:
    hm = np.full((10, 20), value)
    boxes = [(0.0, 0.0, 10.0, 5.0)]  # 50 of 200 pixels
    assert heatmap_boxes(hm) == []
    assert heatmap_boxes(hm, threshold=0.0) == []  # empty mask whatever the threshold
    assert not pointing_hit(hm, boxes)
    assert not pointing_hit(hm, boxes, tolerance_px=100.0)
    assert energy_inside(hm, boxes) == pytest.approx(0.25)  # uniform map: area share
    assert mask_iou(hm, boxes) == 0.0
    s = localization_scores(hm, boxes)
    assert s["pointing"] == 0.0 and s["max_box_iou"] == 0.0 and s["mask_iou"] == 0.0
    assert all(s[k] == 0.0 for k in TIOU_KEYS)
    assert s["energy"] == pytest.approx(0.25)


def test_mask_iou_exact() -> None:
    hm = np.zeros((10, 10))
    hm[0:4, 0:4] = 1.0  # 16 px
    boxes = [(2.0, 0.0, 4.0, 4.0)]  # 16 px, 8 shared
    assert mask_iou(hm, boxes) == pytest.approx(8 / 24)
    assert mask_iou(hm, [(0.0, 0.0, 4.0, 4.0)]) == 1.0
    s = localization_scores(hm, boxes)
    assert s["max_box_iou"] == pytest.approx(1 / 3)
    assert s["tiou@0.3"] == 1.0 and s["tiou@0.4"] == 0.0


def test_energy_is_shift_and_scale_invariant() -> None:
    hm = gaussian((32, 32), 10.0, 10.0, 3.0)
    boxes = [(4.0, 4.0, 12.0, 12.0)]
    assert energy_inside(hm * 5.0 + 2.0, boxes) == pytest.approx(energy_inside(hm, boxes))
    assert energy_inside(hm, [(0.0, 0.0, 32.0, 32.0)]) == pytest.approx(1.0)


def test_invalid_inputs_raise() -> None:
    with pytest.raises(ValueError):
        localization_scores(np.ones((4, 4)), [])
    with pytest.raises(ValueError):
        localization_scores(np.ones((4, 4)), [(0.0, 0.0, 0.0, 3.0)])
    with pytest.raises(ValueError):
        heatmap_boxes(np.ones((2, 2, 2)))
    bad = np.zeros((4, 4))
    bad[0, 0] = np.nan
    with pytest.raises(ValueError):
        energy_inside(bad, [(0.0, 0.0, 2.0, 2.0)])
    with pytest.raises(ValueError):
        summarize_localization([{"pointing": 1.0}], labels=["a", "b"])


def test_summarize_localization_means_and_per_label() -> None:
    scores = [
        {"pointing": 1.0, "energy": 0.8, "tiou@0.1": 1.0},
        {"pointing": 0.0, "energy": 0.2, "tiou@0.1": 0.0},
        {"pointing": 1.0, "energy": 0.5, "tiou@0.1": 1.0},
    ]
    overall_only = summarize_localization(scores)
    assert overall_only["per_label"] == {}
    ov = overall_only["overall"]
    assert ov["n"] == 3
    assert ov["pointing"] == pytest.approx(2 / 3)
    assert ov["energy"] == pytest.approx(0.5)
    assert ov["tiou@0.1"] == pytest.approx(2 / 3)

    out = summarize_localization(scores, labels=["Nodule", "Mass", "Nodule"])
    assert out["overall"] == ov
    assert list(out["per_label"]) == ["Mass", "Nodule"]
    assert out["per_label"]["Nodule"] == {"n": 2, "pointing": 1.0, "energy": pytest.approx(0.65), "tiou@0.1": 1.0}
    assert out["per_label"]["Mass"] == {"n": 1, "pointing": 0.0, "energy": pytest.approx(0.2), "tiou@0.1": 0.0}

    assert summarize_localization([]) == {"overall": {"n": 0}, "per_label": {}}


def test_outputs_are_plain_and_json_serialisable() -> None:
    hm = gaussian((48, 48), 20.0, 20.0, 4.0).astype(np.float32)
    boxes = [(14.0, 14.0, 12.0, 12.0)]
    s1 = localization_scores(hm, boxes)
    s2 = localization_scores(np.zeros((48, 48), dtype=np.float32), boxes)
    assert set(s1) == {"pointing", "energy", "mask_iou", "max_box_iou", *TIOU_KEYS}
    assert all(type(v) is float for v in s1.values())
    assert all(type(v) is float for v in s2.values())
    assert type(pointing_hit(hm, boxes)) is bool
    assert type(box_iou(boxes[0], boxes[0])) is float
    summary = summarize_localization([s1, s2], labels=["Mass", "Mass"])
    assert type(summary["overall"]["n"]) is int
    text = json.dumps(summary, allow_nan=False)
    back = json.loads(text)
    assert math.isclose(back["per_label"]["Mass"]["pointing"], 0.5)
    json.dumps(heatmap_boxes(hm))


# --- issue 18: oracle ceiling, centre prior, tie rule, finding matching, patient bootstrap ---------------------


def _random_boxes(rng: np.random.Generator, size: int, n: int) -> list[list[tuple[float, float, float, float]]]:
    """n images' boxes: 1-2 boxes each, sides 15-35 % of the image (SIIM-like)."""
    out = []
    for _ in range(n):
        boxes = []
        for _ in range(int(rng.integers(1, 3))):
            w, h = rng.uniform(0.15, 0.35, 2) * size
            boxes.append((float(rng.uniform(0, size - w)), float(rng.uniform(0, size - h)), float(w), float(h)))
        out.append(boxes)
    return out


def test_feature_grid() -> None:
    assert feature_grid(64, "layer4") == (2, 2) and feature_grid(128, 4) == (4, 4)
    assert feature_grid(128, "layer2") == (16, 16) and feature_grid(224, 4) == (7, 7)
    assert feature_grid((100, 60), 4) == (4, 2)  # ceil at each stride-2 step: 100 -> 50 -> 25 -> 13 -> 7 -> 4
    with pytest.raises(ValueError):
        feature_grid(64, "layer5")


def test_oracle_near_one_at_a_fine_grid_and_lower_at_a_coarse_grid() -> None:
    boxes = _random_boxes(np.random.default_rng(0), 64, 40)
    refs = reference_scores(boxes, (64, 64), [(16, 16), (2, 2), (16, 16)])
    assert list(refs) == ["centre prior", "oracle 16x16", "oracle 2x2"]  # duplicates scored once
    fine, coarse = refs["oracle 16x16"]["overall"], refs["oracle 2x2"]["overall"]
    assert fine["n"] == 40 and refs["oracle 16x16"]["grid"] == "16x16" and refs["centre prior"]["grid"] == "full"
    assert fine["tiou@0.1"] >= 0.975 and fine["tiou@0.3"] >= 0.95 and fine["pointing"] >= 0.9
    assert coarse["tiou@0.3"] < fine["tiou@0.3"] - 0.2 and coarse["pointing"] < fine["pointing"]
    # reproducible: the same numbers again
    again = reference_scores(boxes, (64, 64), [(2, 2)])["oracle 2x2"]["overall"]
    assert again == coarse
    assert len(refs["oracle 2x2"]["per_image"]["tiou@0.3"]) == 40


def test_oracle_map_is_the_pooled_mask_upsampled() -> None:
    boxes = [(0.0, 0.0, 32.0, 32.0)]  # exactly the top-left cell of a 2x2 grid at 64 px
    m = oracle_heatmap(boxes, (64, 64), (2, 2))
    assert m.shape == (64, 64) and m.dtype == np.float32
    assert m[:16, :16].min() == pytest.approx(1.0) and m[48:, 48:].max() == pytest.approx(0.0)
    np.testing.assert_allclose(oracle_heatmap(boxes, (64, 64), (64, 64)), box_mask(boxes, (64, 64)), atol=1e-6)


def test_centre_prior_is_centred() -> None:
    g = centre_prior_map((8, 8))
    assert g.shape == (8, 8) and g[3:5, 3:5].min() == pytest.approx(g.max())
    np.testing.assert_allclose(g, g[::-1, ::-1], atol=1e-6)


def test_pointing_tie_rule_uses_the_centroid_of_the_maximal_plateau() -> None:
    # a plateau of maximal pixels (rows 0-9, columns 0-9) with float-rounding noise: raster order would pick a
    # noisy pixel; the rule takes the plateau's centroid (5.0, 5.0)
    hm = np.zeros((20, 20))
    hm[:10, :10] = 1.0
    hm[0, 9] = 1.0 + 1e-7
    hm[9, 0] = 1.0 - 1e-7
    inside_centre = [(4.0, 4.0, 2.0, 2.0)]
    at_first_pixel = [(0.0, 0.0, 1.0, 1.0)]
    assert pointing_score(hm, inside_centre) == 1.0 and pointing_hit(hm, inside_centre)
    assert pointing_score(hm, at_first_pixel) == 0.0
    # the same map with the noise moved gives the same answer
    hm2 = hm.copy()
    hm2[0, 9], hm2[5, 5] = 1.0, 1.0 + 1e-7
    assert pointing_score(hm2, inside_centre) == pointing_score(hm, inside_centre)


def test_pointing_tie_between_equal_regions_is_fractional_and_order_free() -> None:
    hm = np.zeros((10, 20))
    hm[2:5, 2:5] = 1.0  # left region, centroid (3.5, 3.5)
    hm[2:5, 14:17] = 1.0  # right region, same size, centroid (15.5, 3.5)
    left, right = [(2.0, 2.0, 3.0, 3.0)], [(14.0, 2.0, 3.0, 3.0)]
    assert pointing_score(hm, left) == 0.5 and pointing_score(hm, right) == 0.5
    assert pointing_score(hm, left + right) == 1.0
    assert pointing_score(hm[:, ::-1], left) == 0.5  # mirrored: no raster-order preference
    assert not pointing_hit(hm, left)
    # a larger region wins the tie outright
    hm[5, 2:5] = 1.0
    assert pointing_score(hm, left) == 1.0 and pointing_score(hm, right) == 0.0
    assert localization_scores(hm, left)["pointing"] == 1.0


def test_boxes_by_class_matches_each_box_to_its_finding() -> None:
    classes = ("Atelectasis", "Effusion", "Mass")
    boxes = [LBox(1, 1, 4, 4, "effusion"), LBox(10, 10, 5, 5, "Mass"), LBox(20, 20, 3, 3, "Effusion")]
    target = [1.0, 1.0, 1.0]  # the first positive finding (Atelectasis) has no box: it is not scored
    got = boxes_by_class(boxes, target, classes, multilabel=True)
    assert got == [(1, [(1.0, 1.0, 4.0, 4.0), (20.0, 20.0, 3.0, 3.0)]), (2, [(10.0, 10.0, 5.0, 5.0)])]
    # unlabelled or unknown box labels fall back to the first positive finding
    assert boxes_by_class([LBox(0, 0, 2, 2, None)], [0.0, 1.0, float("nan")], classes, True) == [(1, [(0.0, 0.0, 2.0, 2.0)])]
    # multi-class: the labelled class with every box, whatever the box label (SIIM's "opacity")
    assert boxes_by_class([LBox(0, 0, 2, 2, "opacity")], [0, 0, 1], classes, False) == [(2, [(0.0, 0.0, 2.0, 2.0)])]
    assert boxes_by_class([], [1, 0, 0], classes, False) == []


def test_patient_bootstrap_mean() -> None:
    vals = [1.0, 1.0, 0.0, 0.0, 1.0, 0.0]
    pats = ["a", "a", "b", "b", "c", "d"]
    r = patient_bootstrap_mean(vals, pats, n_boot=500, seed=1)
    assert r["mean"] == pytest.approx(0.5) and r["n"] == 6 and r["patients"] == 4
    assert 0.0 <= r["lo"] < 0.5 < r["hi"] <= 1.0
    assert patient_bootstrap_mean(vals, pats, n_boot=500, seed=1) == r
    one = patient_bootstrap_mean([0.2, 0.4], ["p", "p"])
    assert one["mean"] == pytest.approx(0.3) and math.isnan(one["lo"])
    with pytest.raises(ValueError):
        patient_bootstrap_mean([1.0], ["a", "b"])
