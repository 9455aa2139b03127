"""The Stage II task's MGACR wiring: negative class, box policy counts, gradient norms, study-level validation."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import pytest
import torch

from deeppneumonia.config import Config, load_config
from deeppneumonia.errors import ConfigError
from deeppneumonia.runtime.device import resolve_runtime
from deeppneumonia.training.pipeline import PreparedData, prepare_data
from deeppneumonia.training.supervised import SupervisedTask, box_policy_counts, negative_class_index
from tests.conftest import make_lesion_csv

SIIM = ("Negative for Pneumonia", "Typical Appearance", "Indeterminate Appearance", "Atypical Appearance")


def test_negative_class_from_the_labels() -> None:
    assert negative_class_index(SIIM, None) == 0
    assert negative_class_index(("PNEUMONIA", "NORMAL"), None) == 1
    assert negative_class_index(("Atelectasis", "No Finding", "Effusion"), None) == 1
    assert negative_class_index(("Abnormal", "clear"), None) is None  # "abnormal" is not "normal"
    assert negative_class_index(("Abnormal", "clear"), "CLEAR") == 1
    with pytest.raises(ConfigError, match="not a class"):
        negative_class_index(SIIM, "healthy")
    with pytest.raises(ConfigError, match="several classes"):
        negative_class_index(("Normal", "No Finding", "Effusion"), None)


def test_box_policy_counts() -> None:
    has_box = torch.tensor([True, False, False, True, False])
    negative = torch.tensor([False, True, False, False, True])
    assert box_policy_counts(has_box, negative) == {"boxed": 2, "negative_no_box": 2, "positive_no_box": 1}


@pytest.fixture(scope="module")
def lesion_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lesion_csv(tmp_path_factory.mktemp("lesions"), n=32, size=32)


def make_task(tmp_path: Path, csv: Path, *extra: str) -> tuple[SupervisedTask, PreparedData, Config]:
    cfg = load_config(None, [f"data.path={csv}", "data.size=32", f"data.cache_dir={tmp_path / 'cache'}",
                             "data.val_fraction=0.25", "data.test_fraction=0.0", "train.pretrained=false",
                             "train.optim.batch_size=8", "train.mgacr.layers=[3, 4]", f"run.out_dir={tmp_path}",
                             "run.progress=false", *extra])
    data = prepare_data(cfg, progress=False)
    rt = resolve_runtime("cpu", "fp32")
    task = SupervisedTask(cfg, data.train, data.val, rt, data.manifest.classes, data.manifest.task)
    for m in task.modules().values():
        m.to(rt.device)
    return task, data, cfg


def test_box_policy_is_logged_and_falls_back_without_a_negative_class(tmp_path: Path, lesion_data: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="deeppneumonia.training.supervised"):
        task, data, _ = make_task(tmp_path / "a", lesion_data)  # classes clear / lesion: no negative-looking name
    assert task.negative_index is None and task.no_box == "skip"
    assert "no class of" in caplog.text and "MGACR box policy skip" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="deeppneumonia.training.supervised"):
        task, data, _ = make_task(tmp_path / "b", lesion_data, "train.mgacr.negative_class=clear")
    assert task.no_box == "by_class" and data.manifest.classes[task.negative_index or 0] == "clear"
    no_box = int((~data.train.has_box).sum())
    assert task.box_counts == {"boxed": int(data.train.has_box.sum()), "negative_no_box": no_box, "positive_no_box": 0}
    assert f"{no_box} without boxes get mask+ = 0" in caplog.text


def test_gradient_norms_on_the_first_steps_only(tmp_path: Path, lesion_data: Path) -> None:
    task, _, _ = make_task(tmp_path, lesion_data, "train.mgacr.negative_class=clear", "train.mgacr.grad_norm_steps=1",
                           "train.mgacr.weight_feature=0.5")
    g = torch.Generator().manual_seed(0)
    steps = task.steps_per_epoch()
    assert steps == len(list(task.train_batches(0))) >= 2
    epoch = task.train_batches(0)  # the loop takes one batch, trains on it, takes the next
    batches = [next(epoch)]
    first = task.training_step(batches[0], g)
    batches.append(next(epoch))
    second = task.training_step(batches[1], g)
    names = {"gn_cls", "gn_att_pos", "gn_att_neg", "gn_feat"}
    assert names <= set(first) and not names & set(second)
    # the loop divides every entry's epoch sum by the number of steps: the first step carries steps x the norm
    ref = task.grad_norms({"feat": 0.5 * task.training_step(batches[0], torch.Generator().manual_seed(0))["feat"]})
    torch.testing.assert_close(first["gn_feat"] / steps, ref["gn_feat"], rtol=1e-4, atol=1e-7)
    assert all(torch.isfinite(first[k]) and first[k] > 0 for k in names)
    assert task.model.conv1.weight.grad is None  # measuring leaves no gradient behind
    first["loss"].backward()  # and the graph is still there for the optimiser
    assert task.model.conv1.weight.grad is not None
    next(task.train_batches(1))
    assert "gn_cls" in task.training_step(batches[0], g)  # counted again in the next epoch
    resumed = itertools.islice(task.train_batches(1), 1, None)  # a resumed epoch skips the batch already taken
    next(resumed)
    assert "gn_cls" not in task.training_step(batches[1], g)  # the second step of the epoch: not measured again


def test_validation_scores_studies_and_picks_by_study_map(tmp_path: Path, lesion_data: Path) -> None:
    task, _, cfg = make_task(tmp_path, lesion_data, "train.mgacr.attention=false", "train.mgacr.feature=false")
    assert cfg.train.best_metric == "study_map" and task.best_metric == "study_map"
    out = task.validate()
    assert {"map", "macro_f1", "study_map", "study_macro_f1", "study_auroc_macro"} <= set(out)
    task.val_studies = None
    assert task._resolve_best_metric("study_map") == "map"
