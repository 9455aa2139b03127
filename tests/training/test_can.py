"""The CAN method end to end on synthetic multi-label images (CPU, seconds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from deeppneumonia.errors import ConfigError
from deeppneumonia.inference.predictor import Predictor
from deeppneumonia.training.pipeline import prepare_data, run_train
from tests.conftest import make_lesion_csv, make_multilabel_csv
from tests.training.test_pipeline import tiny_config


def test_can_trains_on_multilabel_data_and_its_checkpoint_predicts(tmp_path: Path) -> None:
    csv_path = make_multilabel_csv(tmp_path / "ml")
    cfg = tiny_config(tmp_path, csv_path, "train.method=can", "data.classes=[A, B]", "train.pretrained=false",
                      "train.optim.epochs=2")
    data = prepare_data(cfg, progress=False)
    assert data.manifest.task == "multilabel" and np.isnan(data.manifest.targets()).any()
    test = run_train(cfg, data)
    assert {"auroc_macro", "map"} <= set(test) and test["images"] == len(data.test)
    pred = Predictor.from_checkpoint(tmp_path / "run" / "train" / "model.safetensors")
    assert pred.meta["arch"] == "can_resnet18" and pred.multilabel and len(pred.thresholds) == 2
    probs = pred.predict_files([csv_path.parent / "img" / "000.png", csv_path.parent / "img" / "001.png"])
    assert probs.shape == (2, 2) and ((probs >= 0) & (probs <= 1)).all()
    assert all(set(labels) <= {"A", "B"} for labels in pred.labels(probs))
    hist = (tmp_path / "run" / "train" / "metrics.jsonl").read_text()
    assert "train_balance" in hist and "train_attention" in hist
    # the evaluation command reads the per-label CSV in the model's class order and scores the test patients
    from deeppneumonia.evaluation.runner import evaluate_checkpoint

    res = evaluate_checkpoint(tmp_path / "run" / "train" / "model.safetensors", csv_path, tmp_path / "eval",
                              cache_dir=tmp_path / "cache", n_boot=20, max_cam_images=4, progress=False)
    assert res.metrics["images"] == len(data.test)
    assert set(res.metrics["image"]["per_class"]) == {"A", "B"} and (tmp_path / "eval" / "report.html").is_file()


def test_can_refuses_multiclass_data(tmp_path: Path) -> None:
    cfg = tiny_config(tmp_path, make_lesion_csv(tmp_path / "mc", n=24, size=32), "train.method=can",
                      "train.pretrained=false")
    with pytest.raises(ConfigError, match="multi-label"):
        run_train(cfg)
