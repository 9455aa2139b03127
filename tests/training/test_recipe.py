"""Recipe levers of the training loop: one-cycle schedule, EMA of the weights (and its resume), progressive resizing."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torchvision.models import resnet18

from deeppneumonia.data.batches import Batch, resize_batch
from deeppneumonia.data.masks import boxes_to_mask_tensor
from deeppneumonia.errors import DeepPneumoniaError
from deeppneumonia.models.checkpoint import load_state, load_weights
from deeppneumonia.training.loop import WeightEMA, epoch_size, onecycle_factor
from deeppneumonia.training.pipeline import run_pretrain, run_train
from deeppneumonia.training.supervised import SupervisedTask
from tests.conftest import make_lesion_csv
from tests.training.test_pipeline import interrupt_training, tiny_config


@pytest.fixture(scope="module")
def lesion_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lesion_csv(tmp_path_factory.mktemp("lesions"), n=48, size=48)


def test_onecycle_equals_torch_onecyclelr() -> None:
    total, peak = 40, 0.05
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=peak, momentum=0.9)
    ref = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=peak, total_steps=total, pct_start=0.3,
                                              cycle_momentum=False)
    want = []
    for _ in range(total):
        want.append(opt.param_groups[0]["lr"])
        opt.step()
        ref.step()
    got = [peak * onecycle_factor(s, total, 0.3, 0.04) for s in range(total)]
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    top = max(range(total), key=lambda s: got[s])
    assert got[0] == pytest.approx(peak / 25) and got[top] == pytest.approx(peak) and top == 11
    assert all(a <= b for a, b in itertools.pairwise(got[:top + 1]))  # rises, then falls to ~0
    assert all(a >= b for a, b in itertools.pairwise(got[top:])) and got[-1] < peak * 1e-4


def test_ema_equals_manual_ema() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    net(torch.randn(2, 1, 8, 8))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    ema = WeightEMA({"net": net}, decay=0.9)
    manual = {k: v.detach().clone().double() for k, v in net.state_dict().items()}
    for t in range(30):
        loss = net(torch.randn(4, 1, 8, 8)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update()
        d = min(0.9, (1 + t) / (10 + t))
        for k, v in net.state_dict().items():
            manual[k] = d * manual[k] + (1 - d) * v.double() if v.is_floating_point() else v.double()
    live = {k: v.clone() for k, v in net.state_dict().items()}
    with ema.applied():
        for k, v in net.state_dict().items():
            assert torch.allclose(v.double(), manual[k], rtol=1e-5, atol=1e-6), k
    for k, v in net.state_dict().items():  # the live weights are back
        assert torch.equal(v, live[k]), k


def test_ema_resume_mid_epoch_equals_uninterrupted(tmp_path: Path, lesion_data: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["train.pretrained=false", "train.optim.epochs=2", "run.checkpoint_minutes=0", "train.ema_decay=0.9",
            "train.optim.schedule=onecycle", "train.loss.label_smoothing=0.1"]
    run_train(tiny_config(tmp_path / "a", lesion_data, *base))
    killed = tiny_config(tmp_path / "b", lesion_data, *base)
    interrupt_training(killed, monkeypatch, at_step=5)  # epoch 2, second step (3 steps an epoch)
    run_train(killed)
    a = load_state(tmp_path / "a" / "run" / "train" / "last.pt")
    b = load_state(tmp_path / "b" / "run" / "train" / "last.pt")
    assert a["ema"]["updates"] == b["ema"]["updates"] == 6
    for k, v in a["ema"]["tensors"].items():
        assert torch.allclose(v.float(), b["ema"]["tensors"][k].float(), atol=1e-5), k
    ha = [json.loads(x) for x in (tmp_path / "a" / "run" / "train" / "metrics.jsonl").read_text().splitlines()]
    hb = [json.loads(x) for x in (tmp_path / "b" / "run" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [h["val_accuracy"] for h in ha] == pytest.approx([h["val_accuracy"] for h in hb])
    # the saved model is a plain network with torchvision keys; it holds the EMA of the best epoch's weights
    saved = load_file(str(tmp_path / "a" / "run" / "train" / "model.safetensors"))
    assert set(saved) == set(resnet18(weights=None, num_classes=2).state_dict())
    _, meta = load_weights(tmp_path / "a" / "run" / "train" / "model.safetensors")
    if meta["epoch"] == 2:  # the best epoch was the last one: the saved weights are the final EMA
        for k, v in saved.items():
            assert torch.allclose(v.float(), a["ema"]["tensors"][f"model/{k}"].float(), atol=1e-6), k


def test_non_finite_loss_stops_the_run_before_it_is_saved(tmp_path: Path, lesion_data: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    original = SupervisedTask.training_step
    calls = {"n": 0}

    def nan_step(self: SupervisedTask, batch, g):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        losses = original(self, batch, g)
        if calls["n"] == 2:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(SupervisedTask, "training_step", nan_step)
    with pytest.raises(DeepPneumoniaError, match="non-finite loss at epoch 1, between steps 2 and 2"):
        run_train(tiny_config(tmp_path, lesion_data, "train.pretrained=false", "run.checkpoint_minutes=0"))
    state = load_state(tmp_path / "run" / "train" / "last.pt")  # saved after step 1, never after the bad step
    assert state["partial"]["step"] == 1


def test_final_fit_trains_on_train_and_val_and_keeps_the_last_epoch(tmp_path: Path, lesion_data: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    original = SupervisedTask.__init__

    def spy(self: SupervisedTask, cfg, train, *args, **kw):  # type: ignore[no-untyped-def]
        seen.append(len(train))
        original(self, cfg, train, *args, **kw)

    monkeypatch.setattr(SupervisedTask, "__init__", spy)
    cfg = tiny_config(tmp_path, lesion_data, "train.optim.epochs=3", "train.final_fit=true")
    run_pretrain(cfg)  # Stage I then Stage II in one run folder, as `deeppneumonia run` does
    metrics = run_train(cfg)
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert seen == [len(split["train"]) + len(split["val"])]  # the validation patients join training
    assert split["final_fit"] is True  # so `evaluate --split val` can say these images are not held out
    _, meta = load_weights(tmp_path / "run" / "train" / "model.safetensors")
    assert meta["epoch"] == 3  # no selection on images it trained on: the last epoch
    assert "accuracy" in metrics  # the test part, untouched, is still scored


def test_iam_with_final_fit_keeps_the_last_epoch_of_the_last_round(tmp_path: Path, lesion_data: Path) -> None:
    cfg = tiny_config(tmp_path, lesion_data, "train.pretrained=false", "train.method=iam", "train.optim.epochs=3",
                      "train.iam.warmup_epochs=1", "train.iam.iterations=1", "train.iam.epochs_per_iteration=2",
                      "train.final_fit=true")
    run_train(cfg)
    _, meta = load_weights(tmp_path / "run" / "train" / "model.safetensors")
    assert meta["epoch"] == 3 and meta["iam_round"] == 1


def test_epoch_size_rises_in_steps_of_32_to_the_full_side() -> None:
    sizes = [epoch_size(e, 12, 128, 64, 0.5) for e in range(12)]
    assert sizes == [64, 64, 64, 96, 96, 96] + [128] * 6
    assert [epoch_size(e, 4, 224, 128, 1.0) for e in range(4)] == [128, 128, 160, 224]  # the last epoch is full
    assert all(epoch_size(e, 12, 128, 0, 0.5) == 128 for e in range(12))  # off
    assert epoch_size(0, 12, 100, 64, 0.5) == 64 and epoch_size(6, 12, 100, 64, 0.5) == 100  # side not / 32


def test_resize_batch_keeps_the_boxes_on_the_lesion() -> None:
    img = torch.zeros(1, 1, 64, 64, dtype=torch.uint8)
    img[..., 16:40, 8:24] = 200  # a bright lesion at x 8-24, y 16-40
    boxes = torch.tensor([[[8.0, 16.0, 16.0, 24.0]]])
    batch = Batch(img, boxes, torch.tensor([True]), torch.tensor([[0.0, 1.0]]), torch.tensor([0]))
    small = resize_batch(batch, 32)
    assert small.images.shape == (1, 1, 32, 32) and small.images.dtype == torch.uint8
    mask = boxes_to_mask_tensor(small.boxes, torch.tensor([[32.0, 32.0]]), (32, 32))
    x = small.images.float()
    assert x[mask > 0.5].mean() >= 180 and x[mask == 0].mean() <= 10  # the boxes moved with the image
    ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    for grid in (xs, ys):  # same centre: intensity-weighted and mask-weighted
        assert float((x[0, 0] * grid).sum() / x.sum()) == pytest.approx(float((mask[0, 0] * grid).sum() / mask.sum()),
                                                                        abs=0.25)
    assert resize_batch(batch, 64) is batch
    odd = resize_batch(batch, 48)  # a non-integer factor: the image and the boxes still agree to a fraction of a pixel
    mask = boxes_to_mask_tensor(odd.boxes, torch.tensor([[48.0, 48.0]]), (48, 48))
    x = odd.images.float()
    ys, xs = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    for grid in (xs, ys):
        assert float((x[0, 0] * grid).sum() / x.sum()) == pytest.approx(float((mask[0, 0] * grid).sum() / mask.sum()),
                                                                        abs=0.1)


def test_progressive_resizing_trains_small_then_full(tmp_path: Path, lesion_data: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, int]] = []
    original = SupervisedTask.training_step

    def spy(self: SupervisedTask, batch, g):  # type: ignore[no-untyped-def]
        seen.append(tuple(batch.images.shape[-2:]))
        return original(self, batch, g)

    monkeypatch.setattr(SupervisedTask, "training_step", spy)
    run_train(tiny_config(tmp_path, lesion_data, "data.size=64", "train.pretrained=false", "train.optim.epochs=2",
                          "train.optim.resize_from=32", "train.optim.resize_until=0.5"))
    assert seen[0] == (32, 32) and seen[-1] == (64, 64) and len(set(seen)) == 2
    log = [json.loads(x) for x in (tmp_path / "run" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [h["train_size"] for h in log] == [32, 64]


def test_progressive_resizing_resumes_mid_epoch_as_uninterrupted(tmp_path: Path, lesion_data: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["data.size=64", "train.pretrained=false", "train.optim.epochs=2", "run.checkpoint_minutes=0",
            "train.optim.resize_from=32", "train.optim.resize_until=0.5"]
    run_train(tiny_config(tmp_path / "a", lesion_data, *base))
    killed = tiny_config(tmp_path / "b", lesion_data, *base)
    interrupt_training(killed, monkeypatch, at_step=2)  # inside the first (32-px) epoch
    run_train(killed)
    logs = [[json.loads(x) for x in (tmp_path / r / "run" / "train" / "metrics.jsonl").read_text().splitlines()]
            for r in ("a", "b")]
    assert [h["train_size"] for h in logs[1]] == [32, 64]
    assert [h["val_accuracy"] for h in logs[0]] == pytest.approx([h["val_accuracy"] for h in logs[1]])
    a = load_state(tmp_path / "a" / "run" / "train" / "last.pt")["modules"]["model"]
    b = load_state(tmp_path / "b" / "run" / "train" / "last.pt")["modules"]["model"]
    for k, v in a.items():
        assert torch.allclose(v.float(), b[k].float(), atol=1e-5), k
