"""Grad-CAM on a tiny model trained here on synthetic bright lesions: it must look inside the boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from deeppneumonia.evaluation.localization import localization_scores
from deeppneumonia.inference.explain import gradcam, overlay
from deeppneumonia.inference.predictor import Predictor
from deeppneumonia.training.pipeline import PreparedData, prepare_data, run_train
from tests.conftest import make_lesion_csv
from tests.training.test_pipeline import tiny_config


@pytest.fixture(scope="session")
def trained_lesion_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PreparedData]:
    """A classifier trained on 128-px synthetic images (bright box = 'lesion'); shared by explain/evaluate tests."""
    tmp = tmp_path_factory.mktemp("lesion_run")
    csv_path = make_lesion_csv(tmp / "data", n=48, size=128)
    cfg = tiny_config(tmp, csv_path, "data.size=128", "train.pretrained=false", "train.optim.epochs=5",
                      "train.optim.lr=0.05", "train.mgacr.attention=false", "train.mgacr.feature=false",
                      "train.loss.kind=ce")
    run_train(cfg)
    return tmp / "run", prepare_data(cfg, progress=False)


def test_gradcam_peaks_inside_the_lesion_box(trained_lesion_run: tuple[Path, PreparedData]) -> None:
    run, data = trained_lesion_run
    pred = Predictor.from_checkpoint(run / "train" / "model.safetensors", "cpu")
    boxed = [i for i, r in enumerate(data.manifest.records) if r.boxes]
    x = pred.preprocess_uint8(torch.from_numpy(np.stack([data.cache.images[i] for i in boxed]))[:, None])
    pred.model.train()  # gradcam must hand the model back in the mode it found it
    heat = gradcam(pred.model, x, pred.classes.index("lesion"), "layer3")
    assert pred.model.training
    assert not pred.model.layer3._forward_hooks and not pred.model.layer3._backward_hooks  # hooks released
    assert heat.shape == (len(boxed), 128, 128) and heat.min() >= 0 and heat.max() <= 1
    scores = [localization_scores(h, [(b.x, b.y, b.w, b.h) for b in data.cache.boxes(i)])
              for h, i in zip(heat, boxed, strict=True)]
    pointing = np.mean([s["pointing"] for s in scores])
    energy = np.mean([s["energy"] for s in scores])
    area = np.mean([sum(b.w * b.h for b in data.cache.boxes(i)) / 128**2 for i in boxed])
    assert pointing >= 0.75, pointing  # chance is the box's share of the image (about 6 %)
    assert energy > 2 * area


def test_predictor_explain_gives_heatmap_arrays_of_files(trained_lesion_run: tuple[Path, PreparedData]) -> None:
    run, data = trained_lesion_run
    pred = Predictor.from_checkpoint(run / "train" / "model.safetensors", "cpu")
    boxed = [i for i, r in enumerate(data.manifest.records) if r.boxes][:3]
    paths = [data.manifest.records[i].path for i in boxed]
    heat = pred.explain(paths)
    assert heat.shape == (3, 128, 128) and heat.min() >= 0 and heat.max() <= 1
    x = torch.cat([pred.preprocess(__import__("deeppneumonia").read_image(p).pixels) for p in paths])
    same = gradcam(pred.model, x, [int(i) for i in pred.explained_class(pred.probabilities(x))])
    assert np.allclose(heat, same, atol=1e-6)


def test_overlay_draws_boxes_and_heat() -> None:
    from deeppneumonia.data.manifest import Box

    img = np.full((32, 32), 0.5, np.float32)
    heat = np.zeros((16, 16), np.float32)
    pic = np.asarray(overlay(img, heat, [Box(4, 4, 10, 10)], min_size=32))
    assert pic.shape == (32, 32, 3)
    assert tuple(pic[4, 8]) == (0, 255, 0)  # the box outline is green
    assert tuple(pic[20, 20]) != (128, 128, 128)  # the heat colour is blended in
    big = np.asarray(overlay(img, heat, [Box(4, 4, 10, 10)], caption="x"))  # enlarged to 256 px, caption band on top
    assert big.shape == (256 + 16, 256, 3) and tuple(big[16 + 4 * 8, 8 * 8]) == (0, 255, 0)
