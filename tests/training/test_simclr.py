"""Stage I: which encoder is kept (pretrain.select)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deeppneumonia.config import load_config
from deeppneumonia.errors import ConfigError
from deeppneumonia.runtime.device import resolve_runtime
from deeppneumonia.training.pipeline import prepare_data
from deeppneumonia.training.simclr import SimCLRTask
from tests.conftest import make_lesion_csv


def test_encoder_selection(tmp_path: Path) -> None:
    csv = make_lesion_csv(tmp_path / "data", n=24, size=32)
    cfg = load_config(None, [f"data.path={csv}", "data.size=32", f"data.cache_dir={tmp_path / 'cache'}",
                             "data.val_fraction=0.25", "data.test_fraction=0.0", "pretrain.optim.batch_size=8",
                             "pretrain.knn_k=3", f"run.out_dir={tmp_path}"])
    data = prepare_data(cfg, progress=False)
    rt = resolve_runtime("cpu", "fp32")
    task = SimCLRTask(cfg, data.train, data.val, rt, multiclass=True)
    assert cfg.pretrain.select == "last" and task.best_metric == "last_epoch"
    task.train_batches(4)
    out = task.validate()
    assert out["last_epoch"] == 5.0 and out["neg_contrastive_loss"] == -out["contrastive_loss"]
    assert "knn_accuracy" in out  # still reported
    for select, key in (("val_loss", "neg_contrastive_loss"), ("knn", "knn_accuracy")):
        c = load_config(None, [f"data.path={csv}", f"pretrain.select={select}"])
        assert SimCLRTask(c, data.train, data.val, rt, multiclass=True).best_metric == key
    with pytest.raises(ConfigError, match=r"pretrain\.select=knn"):
        SimCLRTask(load_config(None, ["pretrain.select=knn"]), data.train, data.val, rt, multiclass=False)
