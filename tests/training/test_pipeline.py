"""End-to-end: tiny runs on synthetic lesion images (CPU, seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torchvision.models import resnet18

from deeppneumonia.config import Config, load_config
from deeppneumonia.errors import ConfigError
from deeppneumonia.models.checkpoint import load_state, load_weights
from deeppneumonia.training.pipeline import open_run, prepare_data, run_pretrain, run_train
from deeppneumonia.training.supervised import SupervisedTask
from tests.conftest import make_lesion_csv


def tiny_config(tmp_path: Path, csv_path: Path, *extra: str) -> Config:
    return load_config(None, [
        f"data.path={csv_path}", "data.size=32", f"data.cache_dir={tmp_path / 'cache'}", "data.val_fraction=0.25",
        "data.test_fraction=0.25", "pretrain.optim.epochs=1", "pretrain.optim.batch_size=8", "pretrain.knn_k=3",
        "train.optim.epochs=2", "train.optim.batch_size=8", "train.optim.warmup_epochs=0",
        f"run.out_dir={tmp_path / 'run'}", "run.progress=false", "run.precision=fp32", *extra])


@pytest.fixture(scope="module")
def lesion_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lesion_csv(tmp_path_factory.mktemp("lesions"), n=48, size=48)


def test_two_stages_end_to_end(tmp_path: Path, lesion_data: Path) -> None:
    cfg = tiny_config(tmp_path, lesion_data)
    data = prepare_data(cfg, progress=False)
    pre = run_pretrain(cfg, data)
    run = tmp_path / "run"
    assert pre.epochs_run == 1 and (run / "pretrain" / "encoder.safetensors").is_file()
    enc = load_file(str(run / "pretrain" / "encoder.safetensors"))
    assert not any("projector" in k or k.startswith("fc.") for k in enc)  # projector discarded
    hist = [json.loads(line) for line in (run / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert {"train_loss", "val_knn_accuracy", "val_contrastive_accuracy"} <= set(hist[0])

    test = run_train(cfg, data)
    assert 0 <= test["accuracy"] <= 1 and test["images"] == len(data.test) > 0
    state, meta = load_weights(run / "train" / "model.safetensors")
    assert set(state) == set(resnet18(weights=None, num_classes=2).state_dict())  # no MGACR parts
    assert meta["classes"] == ["clear", "lesion"] and meta["preprocessing"]["size"] == 32
    assert meta["config"]["train"]["mgacr"]["attention"] is True and "torch" in meta["versions"]
    hist = [json.loads(line) for line in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    assert len(hist) == 2
    assert {"train_cls", "train_att_pos", "train_att_neg", "train_feat", "val_att4_inside"} <= set(hist[0])
    assert (run / "test_metrics.json").is_file() and (run / "config.yaml").is_file()
    split = json.loads((run / "split.json").read_text())
    assert not set(split["train"]) & set(split["test"])


def test_training_learns_the_synthetic_lesion(tmp_path: Path, lesion_data: Path) -> None:
    cfg = tiny_config(tmp_path, lesion_data, "train.pretrained=false", "train.optim.epochs=6", "train.optim.lr=0.05",
                      "train.mgacr.attention=false", "train.mgacr.feature=false", "train.loss.kind=ce")
    run_train(cfg)
    hist = [json.loads(line) for line in (tmp_path / "run" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]
    assert max(h["val_accuracy"] for h in hist) >= 0.75  # bright box vs none is easy: chance is 0.5


def test_resume_after_kill_equals_uninterrupted(tmp_path: Path, lesion_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["train.pretrained=false", "train.optim.epochs=2"]
    full = tiny_config(tmp_path / "a", lesion_data, *base)
    run_train(full)
    killed = tiny_config(tmp_path / "b", lesion_data, *base)
    original = SupervisedTask.validate
    calls = {"n": 0}

    def dying_validate(self: SupervisedTask) -> dict[str, float]:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # killed during epoch 2, after epoch 1 was checkpointed
        return original(self)

    monkeypatch.setattr(SupervisedTask, "validate", dying_validate)
    with pytest.raises(KeyboardInterrupt):
        run_train(killed)
    assert load_state(tmp_path / "b" / "run" / "train" / "last.pt")["epoch"] == 0
    monkeypatch.setattr(SupervisedTask, "validate", original)
    run_train(killed)
    a = load_state(tmp_path / "a" / "run" / "train" / "last.pt")
    b = load_state(tmp_path / "b" / "run" / "train" / "last.pt")
    assert a["epoch"] == b["epoch"] == 1
    for k, v in a["modules"]["model"].items():
        assert torch.allclose(v.float(), b["modules"]["model"][k].float(), atol=1e-5), k
    lines = (tmp_path / "b" / "run" / "train" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_table1_switches_and_config_guard(tmp_path: Path, lesion_data: Path) -> None:
    cfg = tiny_config(tmp_path, lesion_data, "train.mgacr.attention=false", "train.mgacr.feature=false",
                      "train.loss.kind=ce", "train.pretrained=false")
    data = prepare_data(cfg, progress=False)
    from deeppneumonia.runtime.device import resolve_runtime

    task = SupervisedTask(cfg, data.train, data.val, resolve_runtime("cpu", "fp32"), data.manifest.classes, "multiclass")
    assert set(task.modules()) == {"model"}
    assert torch.allclose(task.cls_loss.weights, torch.ones(2))
    open_run(cfg)
    with pytest.raises(ConfigError, match="another config"):
        open_run(tiny_config(tmp_path, lesion_data, "train.optim.lr=0.5"))


def test_pretrained_encoder_must_exist(tmp_path: Path, lesion_data: Path) -> None:
    with pytest.raises(ConfigError, match="run `deeppneumonia pretrain` first"):
        run_train(tiny_config(tmp_path, lesion_data))


def interrupt_training(cfg: Config, monkeypatch: pytest.MonkeyPatch, at_step: int) -> None:
    """Run Stage II of ``cfg`` and stop it like Ctrl-C at its ``at_step``-th training step (1-based)."""
    original = SupervisedTask.training_step
    calls = {"n": 0}

    def dying_step(self: SupervisedTask, batch, g):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == at_step:
            raise KeyboardInterrupt
        return original(self, batch, g)

    with monkeypatch.context() as m:
        m.setattr(SupervisedTask, "training_step", dying_step)
        with pytest.raises(KeyboardInterrupt):
            run_train(cfg)


def test_resume_mid_epoch_equals_uninterrupted(tmp_path: Path, lesion_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["train.pretrained=false", "train.optim.epochs=2", "run.checkpoint_minutes=0"]  # save after every step
    run_train(tiny_config(tmp_path / "a", lesion_data, *base))
    killed = tiny_config(tmp_path / "b", lesion_data, *base)
    interrupt_training(killed, monkeypatch, at_step=5)  # epoch 2, second step (3 steps an epoch)
    state = load_state(tmp_path / "b" / "run" / "train" / "last.pt")
    assert state["epoch"] == 0 and state["partial"]["step"] == 1
    run_train(killed)
    a = load_state(tmp_path / "a" / "run" / "train" / "last.pt")
    b = load_state(tmp_path / "b" / "run" / "train" / "last.pt")
    for k, v in a["modules"]["model"].items():
        assert torch.allclose(v.float(), b["modules"]["model"][k].float(), atol=1e-5), k
    ha = [json.loads(line) for line in (tmp_path / "a" / "run" / "train" / "metrics.jsonl").read_text().splitlines()]
    hb = [json.loads(line) for line in (tmp_path / "b" / "run" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [h["train_loss"] for h in ha] == pytest.approx([h["train_loss"] for h in hb], rel=1e-5)


def test_probe_judges_an_encoder_against_random_init(tmp_path: Path, lesion_data: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from deeppneumonia.cli import main

    cfg = tiny_config(tmp_path, lesion_data)
    run_pretrain(cfg)
    enc = tmp_path / "run" / "pretrain" / "encoder.safetensors"
    assert main(["-q", "probe", "--encoder", str(enc), "--data", str(lesion_data), "--cache-dir",
                 str(tmp_path / "cache"), "--device", "cpu", "--n-boot", "200"]) == 0
    out = capsys.readouterr().out
    assert "pretrained: knn_accuracy" in out and "random_init: knn_accuracy" in out
    assert "difference: knn_accuracy" in out and "linear_balanced_accuracy" in out
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert f"val {len(split['val'])} images" in out  # the run's own validation patients, never its test part


def test_stage1_extra_unlabelled_data_leaves_out_the_runs_own_images(tmp_path: Path, lesion_data: Path) -> None:
    other = make_lesion_csv(tmp_path / "other", n=16, size=48, seed=7)
    cfg = tiny_config(tmp_path, lesion_data, f"pretrain.extra_data=[{other}, {lesion_data}]")
    data = prepare_data(cfg, progress=False)
    from deeppneumonia.training.pipeline import extra_pretrain_data

    parts = extra_pretrain_data(cfg, data)
    assert [len(p) for p in parts] == [16, 0]  # the run's own CSV adds nothing: its val/test images stay unseen
    run_pretrain(cfg, data)
    hist = json.loads((tmp_path / "run" / "pretrain" / "metrics.jsonl").read_text().splitlines()[0])
    assert np.isfinite(hist["train_loss"])


def test_a_corrupt_run_config_and_a_misfit_encoder_are_one_line_errors(tmp_path: Path, lesion_data: Path) -> None:
    from deeppneumonia.errors import ConfigError
    from deeppneumonia.models.factory import build_classifier, encoder_state
    from deeppneumonia.training.supervised import load_encoder_checked

    cfg = tiny_config(tmp_path, lesion_data)
    run_dir = open_run(cfg)
    (run_dir / "config.yaml").write_bytes(b"data: [unclosed\n\xff")
    with pytest.raises(ConfigError, match="not a readable config"):
        open_run(cfg)
    with pytest.raises(ConfigError, match="does not fit"):
        load_encoder_checked(build_classifier(2, "resnet18"), encoder_state(build_classifier(2, "resnet50")))


def test_probe_refuses_what_it_cannot_do(tmp_path: Path, lesion_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from deeppneumonia.cli import main

    cfg = tiny_config(tmp_path, lesion_data, "pretrain.optim.epochs=1")
    run_pretrain(cfg)
    enc = str(tmp_path / "run" / "pretrain" / "encoder.safetensors")
    args = ["-q", "probe", "--encoder", enc, "--data", str(lesion_data), "--cache-dir", str(tmp_path / "cache"),
            "--device", "cpu"]
    assert main([*args, "--n-boot", "0"]) == 2
    assert "--n-boot must be >= 1" in capsys.readouterr().err
    split_file = tmp_path / "run" / "split.json"
    parts = json.loads(split_file.read_text())
    split_file.write_text(json.dumps({**parts, "val": []}))  # a run without validation patients: no silent fallback
    assert main([*args, "--n-boot", "50"]) == 2
    assert "no val images to probe on" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["deep_pneumonia", "iam"])
def test_encoder_rescale_reaches_the_network_of_each_task(tmp_path: Path, lesion_data: Path, method: str,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """train.encoder_rescale=true: the Stage II network's convolutions start at a fresh network's norms."""
    from deeppneumonia.models.factory import build_classifier, conv_bn_pairs, encoder_state
    from deeppneumonia.training.pipeline import build_task, runtime_for

    torch.manual_seed(5)
    grown = build_classifier(2)
    with torch.no_grad():
        for _, conv, _ in conv_bn_pairs(grown):
            conv.weight.mul_(4.0)
    enc = encoder_state(grown)
    extra = ["train.method=iam", "train.iam.warmup_epochs=1", "train.iam.iterations=1",
             "train.iam.epochs_per_iteration=1"] if method == "iam" else []
    norms = {}
    caplog.set_level("INFO", logger="deeppneumonia.training.supervised")
    for rescale in ("false", "true"):
        cfg = tiny_config(tmp_path / rescale, lesion_data, f"train.encoder_rescale={rescale}", *extra)
        data = prepare_data(cfg, progress=False)
        model = build_task(cfg, data, runtime_for(cfg), enc).modules()["model"]
        got = {n: c.weight.norm() for n, c, _ in conv_bn_pairs(model)}
        norms[rescale] = torch.stack([got[n] for n, _, _ in conv_bn_pairs(grown)])  # the encoder's convolutions
    assert torch.allclose(norms["false"], torch.stack([c.weight.norm() for _, c, _ in conv_bn_pairs(grown)]))
    assert torch.allclose(norms["true"] * 4.0, norms["false"], rtol=0.25)  # back near a fresh init (x1/4)
    assert "20 convolutions scaled back to a fresh network's norms" in caplog.text  # said in the run log
