"""Iterative Attention Mining: erasing, knowledge preservation, frozen copies, schedule, end to end with resume."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from deeppneumonia.config import Config, IAMConfig, OptimConfig, load_config
from deeppneumonia.errors import ConfigError
from deeppneumonia.evaluation.iam_maps import aggregate_maps, iam_heatmaps, load_round_networks
from deeppneumonia.losses.knowledge import kp_loss
from deeppneumonia.models.cam import class_maps, salient_mask
from deeppneumonia.models.checkpoint import load_state, load_weights
from deeppneumonia.models.factory import build_classifier
from deeppneumonia.runtime.device import resolve_runtime
from deeppneumonia.training.iam import IAMTask, iam_lr_factor, positive_labels
from deeppneumonia.training.loop import lr_factor
from deeppneumonia.training.pipeline import prepare_data, run_train
from deeppneumonia.transforms.erase import erase
from tests.conftest import make_lesion_csv


class BrightnessNet(nn.Module):
    """A stand-in classifier whose class-1 CAM is the image brightness (a lesion detector by construction)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[-1.0], [1.0]]))
            self.fc.bias.zero_()

    def forward_features(self, x: Tensor) -> Tensor:
        return nn.functional.avg_pool2d(x, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.forward_features(x).mean((2, 3)))


def lesion_batch(size: int = 64, box: tuple[int, int, int, int] = (36, 12, 16, 12)) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 1, size, size, generator=g) * 0.2
    box_mask = torch.zeros(2, 1, size, size, dtype=torch.bool)
    bx, by, bw, bh = box
    x[0, :, by:by + bh, bx:bx + bw] += 3.0  # image 0: a bright lesion; image 1: none
    box_mask[0, :, by:by + bh, bx:bx + bw] = True
    return x, box_mask


@pytest.mark.parametrize("fill", ["mean", "zero", "blur"])
def test_erasing_removes_the_salient_region(fill: str) -> None:
    x, box = lesion_batch()
    maps, _ = class_maps(BrightnessNet(), x)
    mask = salient_mask(maps, torch.tensor([[False, True], [False, True]]), 0.6, (64, 64))
    lesion = mask[0] & box[0]
    assert lesion.sum() >= 0.9 * box[0].sum()  # the salient region covers the lesion ...
    assert (mask[0] & ~box[0]).sum() <= 0.25 * box[0].sum()  # ... and little else
    erased = erase(x, mask, fill, zero_value=-2.0)
    assert x[0][box[0]].mean() > 2.5 and erased[0][box[0]].mean() < 1.0  # the lesion's brightness is gone
    assert torch.equal(erased[0][~mask[0]], x[0][~mask[0]])  # nothing else changes
    again, _ = class_maps(BrightnessNet(), erased)
    assert again[0, 1].max() < 0.5 * maps[0, 1].max()  # the network's evidence there is gone too


def test_only_positive_non_negative_labels_are_mined() -> None:
    classes = ("Negative for Pneumonia", "Typical Appearance", "Atypical Appearance")
    t = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1]])
    sel = positive_labels(t, classes, ("negative for pneumonia",))
    assert sel.tolist() == [[False, False, False], [False, True, False], [False, False, True]]
    ml = torch.tensor([[1.0, float("nan"), 1.0], [0, 0, 0]])  # multi-label: union of positives, NaN = unknown
    assert positive_labels(ml, ("a", "b", "c"), ()).tolist() == [[True, False, True], [False, False, False]]


@pytest.mark.parametrize("kind", ["kl", "l2_logits"])
@pytest.mark.parametrize("multilabel", [False, True])
def test_kp_loss_is_zero_for_identical_networks_and_grows_with_divergence(kind: str, multilabel: bool) -> None:
    torch.manual_seed(0)
    net = build_classifier(3).eval()
    x = torch.randn(4, 1, 64, 64)
    frozen = copy.deepcopy(net)
    assert kp_loss(net(x), frozen(x), kind, multilabel).item() == pytest.approx(0.0, abs=1e-6)
    values = []
    for eps in (0.01, 0.1, 0.5):
        moved = copy.deepcopy(net)
        with torch.no_grad():
            moved.fc.weight.add_(eps * torch.randn_like(moved.fc.weight, generator=torch.Generator().manual_seed(1)))
        values.append(kp_loss(moved(x), frozen(x), kind, multilabel).item())
    assert 0 < values[0] < values[1] < values[2]


def tiny_iam_config(tmp_path: Path, csv_path: Path, *extra: str) -> Config:
    return load_config(None, [
        f"data.path={csv_path}", "data.size=48", f"data.cache_dir={tmp_path.parent / 'cache'}", "data.val_fraction=0.25",
        "data.test_fraction=0.25", "train.optim.epochs=2", "train.optim.batch_size=8", "train.optim.warmup_epochs=0",
        "train.method=iam", "train.pretrained=false", "train.iam.warmup_epochs=1", "train.iam.iterations=1",
        "train.iam.msa_layers=[3, 4]", f"run.out_dir={tmp_path / 'run'}", "run.progress=false", "run.precision=fp32",
        *extra])


@pytest.fixture(scope="module")
def lesion_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lesion_csv(tmp_path_factory.mktemp("iam_lesions"), n=32, size=48)


@pytest.mark.parametrize("task_kind", ["multiclass", "multilabel"])
def test_gradients_never_reach_the_frozen_copy(tmp_path: Path, lesion_data: Path, task_kind: str) -> None:
    """Also the multi-label path (sigmoid loss, Bernoulli KL): the one-hot targets are valid 0/1 label vectors."""
    cfg = tiny_iam_config(tmp_path, lesion_data, "train.iam.erase_threshold=0.3")
    data = prepare_data(cfg, progress=False)
    task = IAMTask(cfg, data.train, data.val, resolve_runtime("cpu", "fp32"), data.manifest.classes, task_kind)
    assert task.cls_loss.mode == ("sigmoid" if task_kind == "multilabel" else "softmax")
    assert [task.round_of(e) for e in range(2)] == [0, 1]
    batches = task.train_batches(1)  # the first epoch of mining round 1 takes the frozen copy
    frozen = task.rounds.nets[0]
    assert int(task.rounds.started) == 1 and not frozen.training
    for a, b in zip(frozen.state_dict().values(), task.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    task.model.train()
    task.rounds.train()  # the loop calls train() on every module: the frozen copy must stay in eval mode
    assert not frozen.training
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    losses = task.training_step(next(iter(batches)), torch.Generator().manual_seed(0))
    losses["loss"].backward()
    assert {"cls", "kp", "erased_area", "loss"} <= set(losses) and 0 < float(losses["erased_area"]) < 1
    assert all(not p.requires_grad and p.grad is None for p in frozen.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in task.model.parameters())
    for k, v in frozen.state_dict().items():  # BN running statistics untouched as well
        assert torch.equal(v, before[k]), k
    params = [p for m in task.modules().values() for p in m.parameters() if p.requires_grad]
    assert {id(p) for p in params} == {id(p) for p in task.model.parameters()}  # the optimizer sees only the model


def test_schedule_must_match_the_epochs(tmp_path: Path, lesion_data: Path) -> None:
    cfg = tiny_iam_config(tmp_path, lesion_data, "train.optim.epochs=5")
    data = prepare_data(cfg, progress=False)
    with pytest.raises(ConfigError, match=r"set train\.optim\.epochs=2"):
        IAMTask(cfg, data.train, data.val, resolve_runtime("cpu", "fp32"), data.manifest.classes, "multiclass")


def test_iam_end_to_end_and_mid_epoch_resume(tmp_path: Path, lesion_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Warm-up + one mining round through the one training loop; a kill inside the mining round resumes exactly."""
    run_train(tiny_iam_config(tmp_path / "a", lesion_data))
    train_dir = tmp_path / "a" / "run" / "train"
    hist = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines()]
    assert [h["val_iam_round"] for h in hist] == [0.0, 1.0]
    # the loop runs the task's schedule: lr at the end of round 0 = the mining round's start (0.1 x 0.01), which
    # decays by a cosine to 0 at the end of the round (the global cosine would give 0.005 after epoch 1)
    assert hist[0]["lr"] == pytest.approx(0.001) and hist[1]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert "train_kp" not in hist[0] and hist[1]["train_kp"] >= 0 and 0 < hist[1]["train_erased_area"] < 1
    state, meta = load_weights(train_dir / "model.safetensors")
    assert meta["arch"] == "resnet18_msa34" and meta["epoch"] == 2 and meta["iam_round"] == 1
    nets, rmeta = load_round_networks(train_dir / "model.safetensors")
    assert rmeta["rounds"] == 1 and len(nets) == 1
    last = load_state(train_dir / "last.pt")
    for k, v in nets[0].state_dict().items():  # round 0 = the network at the end of the warm-up
        assert torch.equal(v, last["modules"]["iam_rounds"][f"nets.0.{k}"]), k
    final = build_classifier(2, meta["arch"])
    final.load_state_dict(state)
    x = torch.randn(3, 1, 48, 48)
    heat = iam_heatmaps([*nets, final.eval()], x, [1, 1, 0])
    assert heat.shape == (3, 48, 48) and heat.min() >= 0 and heat.max() <= 1
    from deeppneumonia.evaluation.runner import evaluate_checkpoint

    res = evaluate_checkpoint(train_dir / "model.safetensors", lesion_data, tmp_path / "eval", split="test",
                              cache_dir=tmp_path.parent / "cache", n_boot=5, gallery_per_class=0, progress=False)
    assert res.metrics["localization_iam"]["rounds"] == 2 and res.metrics["localization_iam"]["overall"]["n"] > 0
    occ, refs = res.metrics["occlusion"], res.metrics["localization_references"]  # issue 18's evaluate block
    assert occ["n"] + occ["skipped"] > 0 and "difference" in occ and "road" in occ
    assert "centre prior" in refs and "oracle 2x2" in refs  # Grad-CAM at layer4 of a 48-px input: 2x2

    killed = tiny_iam_config(tmp_path / "b", lesion_data, "run.checkpoint_minutes=0")  # saves after every step
    original = IAMTask.training_step
    calls = {"n": 0}

    def dying_step(self: IAMTask, batch, g):  # type: ignore[no-untyped-def]
        calls["n"] += self.round == 1
        if calls["n"] == 2:  # the 2nd step of the mining round, after the 1st was checkpointed
            raise KeyboardInterrupt
        return original(self, batch, g)

    monkeypatch.setattr(IAMTask, "training_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        run_train(killed)
    partial = load_state(tmp_path / "b" / "run" / "train" / "last.pt")
    assert partial["partial"]["step"] == 1 and int(partial["modules"]["iam_rounds"]["started"]) == 1
    monkeypatch.setattr(IAMTask, "training_step", original)
    run_train(killed)
    b = load_state(tmp_path / "b" / "run" / "train" / "last.pt")
    for name in ("model", "iam_rounds"):
        for k, v in last["modules"][name].items():
            assert torch.allclose(v.float(), b["modules"][name][k].float(), atol=1e-5), (name, k)


def test_aggregate_max_and_mean() -> None:
    maps = torch.stack([torch.zeros(1, 2, 2), torch.ones(1, 2, 2)])
    assert aggregate_maps(maps, "max").eq(1).all() and aggregate_maps(maps, "mean").eq(0.5).all()
    with pytest.raises(ValueError):
        aggregate_maps(maps, "median")
    assert np.isfinite(iam_heatmaps([build_classifier(2).eval()], torch.randn(1, 1, 64, 64), [0])).all()


def test_a_one_epoch_mining_round_does_not_ramp_the_learning_rate_up() -> None:
    """The case of issue 18: IAM from a trained network (no warm-up round), one mining epoch, the preset's
    one-epoch linear warm-up in train.optim. The round now starts at round_lr and only decays."""
    optim = OptimConfig(epochs=1, lr=0.02, warmup_epochs=1.0)
    ic = IAMConfig(warmup_epochs=0, iterations=1, epochs_per_iteration=1, init="model.safetensors")
    spe = 10
    f = [iam_lr_factor(s, spe, ic, optim) for s in range(spe + 1)]  # + the loop's final scheduler step
    assert f[0] == pytest.approx(ic.round_lr) and ic.round_lr == 0.1
    assert all(b is not None and a is not None and b <= a for a, b in itertools.pairwise(f))
    assert f[-1] == pytest.approx(0.0, abs=1e-12)
    # before issue 18 (round_schedule=global) the loop's own schedule applied: a ramp up to the full rate
    assert iam_lr_factor(0, spe, IAMConfig(round_schedule="global"), optim) is None
    old = [lr_factor(s, spe, spe, optim.schedule) for s in range(spe)]
    assert old[0] == pytest.approx(0.1) and old[-1] == pytest.approx(1.0)


def test_iam_round_schedule_restarts_each_round() -> None:
    optim = OptimConfig(epochs=5, lr=0.01, warmup_epochs=0.5, schedule="cosine")
    ic = IAMConfig(warmup_epochs=1, iterations=2, epochs_per_iteration=2, round_lr=0.2)
    spe = 4
    f = [iam_lr_factor(s, spe, ic, optim) for s in range(5 * spe + 1)]
    assert f[:4] == pytest.approx([lr_factor(s, 4, 2, "cosine") for s in range(4)])  # round 0: its own warm-up + cosine
    for start in (4, 12):  # mining rounds 1 and 2: 8 steps each, from 0.2 down
        seg = f[start:start + 8]
        assert seg[0] == pytest.approx(0.2) and all(b < a for a, b in itertools.pairwise(seg))
        assert seg[4] == pytest.approx(0.1)  # half-way through the round: half the start (cosine)
    assert f[-1] == pytest.approx(0.0, abs=1e-12)
    const = IAMConfig(warmup_epochs=1, iterations=2, epochs_per_iteration=2, round_schedule="constant")
    assert {iam_lr_factor(s, spe, const, optim) for s in range(4, 20)} == {0.1}
