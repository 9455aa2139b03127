"""The CUDA path. Tests marked ``cuda`` skip without a GPU (benchmarks/gpu_check.sh runs them on one); the
others check the device choices on CPU by faking the device properties."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import pytest
import torch
from torch import nn

from deeppneumonia.config import AugmentConfig, Config, OptimConfig
from deeppneumonia.data.batches import Batch
from deeppneumonia.models.checkpoint import load_state
from deeppneumonia.runtime import distributed
from deeppneumonia.runtime.device import cuda_autocast_dtype, resolve_runtime
from deeppneumonia.training.loop import _wrap, fit
from deeppneumonia.training.pipeline import PreparedData, place_data, prepare_data, run_train
from deeppneumonia.training.supervised import SupervisedTask
from deeppneumonia.transforms.augment import augment
from tests.conftest import make_lesion_csv
from tests.training.test_pipeline import tiny_config

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def lesion_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lesion_csv(tmp_path_factory.mktemp("lesions"), n=48, size=48)


# --- on CPU: the device choices ------------------------------------------------------------------------------

@pytest.mark.parametrize(("capability", "dtype"), [((6, 0), torch.float16), ((7, 5), torch.float16),
                                                   ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)])
def test_fp16_exactly_below_compute_capability_8(monkeypatch: pytest.MonkeyPatch, capability: tuple[int, int],
                                                 dtype: torch.dtype) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # emulation counts
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", torch.backends.cudnn.benchmark)  # restored afterwards
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # run.device=cuda is checked against the machine
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert cuda_autocast_dtype(torch.device("cuda")) == dtype
    assert resolve_runtime("cuda", "auto").dtype == dtype
    assert torch.backends.cudnn.benchmark  # run.deterministic=false: the fastest kernels


def test_cuda_index_under_torchrun_becomes_the_local_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(distributed, "local_rank", lambda: 3)
    monkeypatch.setattr(distributed, "rank", lambda: 3)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert [distributed.device_for(d) for d in ("auto", "cuda", "cuda:0", "cuda:3", "cpu")] == \
        ["cuda:3", "cuda:3", "cuda:3", "cuda:3", "cpu"]


# --- on a GPU ------------------------------------------------------------------------------------------------

@cuda
def test_autocast_dtype_of_this_gpu() -> None:
    want = torch.bfloat16 if torch.cuda.get_device_capability() >= (8, 0) else torch.float16
    assert resolve_runtime("cuda", "auto").dtype == want


@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_augmentation_under_autocast_matches_cpu_fp32(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    x, m = torch.rand(16, 1, 96, 96), (torch.rand(16, 1, 96, 96) > 0.7).float()
    cfg = AugmentConfig(crop_scale=(0.35, 1.0), rotate_deg=15.0, hflip=True, blur_prob=0.5, noise_std=0.0)
    ref, ref_m = augment(x, m, cfg, torch.Generator().manual_seed(1))
    with torch.autocast("cuda", dtype=dtype):
        out, out_m = augment(x.cuda(), m.cuda(), cfg, torch.Generator().manual_seed(1))
    assert out.dtype == torch.float32 and out_m is not None and ref_m is not None
    assert (out.cpu() - ref).abs().max() < 5e-3  # TF32 blur at most; a bf16 sampling grid is off by ~0.1
    assert (out_m.cpu() - ref_m).abs().max() < 1e-3
    noisy = dataclasses.replace(cfg, noise_std=0.05)  # the noise is drawn on the GPU: autocast changes nothing
    plain, _ = augment(x.cuda(), None, noisy, torch.Generator().manual_seed(2))
    with torch.autocast("cuda", dtype=dtype):
        cast, _ = augment(x.cuda(), None, noisy, torch.Generator().manual_seed(2))
    assert torch.allclose(plain, cast, atol=1e-5)
    clean, _ = augment(x.cuda(), None, cfg, torch.Generator().manual_seed(2))
    assert 0.02 < (plain - clean).std() < 0.06


def _task(cfg: Config, data: PreparedData, device: str, precision: str) -> SupervisedTask:
    rt = resolve_runtime(device, precision)
    return SupervisedTask(cfg, data.train, data.val, rt, data.manifest.classes, data.manifest.task)


@cuda
def test_fp16_resume_from_an_fp32_last_pt(tmp_path: Path, lesion_data: Path) -> None:
    cfg = tiny_config(tmp_path, lesion_data, "train.pretrained=false")
    data = prepare_data(cfg, progress=False)
    run_dir = tmp_path / "fit"
    fit(_task(cfg, data, "cpu", "fp32"), OptimConfig(epochs=1, batch_size=8, warmup_epochs=0), run_dir,
        resolve_runtime("cpu", "fp32"), progress=False)
    assert load_state(run_dir / "last.pt")["scaler"] == {}  # a disabled scaler
    task = _task(cfg, data, "cuda", "fp16")
    result = fit(task, OptimConfig(epochs=2, batch_size=8, warmup_epochs=0), run_dir, task.rt, progress=False)
    assert result.epochs_run == 2 and load_state(run_dir / "last.pt")["scaler"]  # fp16: the scaler now runs


@cuda
def test_training_step_without_host_sync(tmp_path: Path, lesion_data: Path) -> None:
    cfg = tiny_config(tmp_path, lesion_data, "train.pretrained=false", "train.augment.blur_prob=0.5",
                      "train.augment.noise_std=0.03", "run.data_on_device=always")
    data = prepare_data(cfg, progress=False)
    task = _task(cfg, data, "cuda", "auto")
    place_data(cfg, data, task.rt)
    modules = task.modules()
    for mod in modules.values():
        mod.to(task.rt.device).to(memory_format=task.rt.memory_format).train()
    opt = torch.optim.SGD([p for mod in modules.values() for p in mod.parameters()], lr=0.01, momentum=0.9)
    batches = task.train_batches(0)
    g = torch.Generator().manual_seed(0)

    def step(batch: Batch) -> None:
        with task.rt.autocast():
            loss = task.training_step(batch, g)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(next(batches))  # first step: lazy initialisation (cuDNN, cuBLAS) may sync
    batch = next(batches)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step(batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@cuda
def test_gpu_resident_split_and_pinned_batches(tmp_path: Path, lesion_data: Path) -> None:
    cfg = tiny_config(tmp_path, lesion_data, "run.data_on_device=never")
    data = prepare_data(cfg, progress=False)
    rt = resolve_runtime("cuda", "auto")
    place_data(cfg, data, rt)
    assert data.train.resident is None and data.train.pin and data.val.pin
    pos = torch.arange(0, 8).numpy()
    host = data.train.batch(pos)
    assert host.images.is_pinned() and host.target.is_pinned() and host.boxes.is_pinned()
    data.train.keep_on(rt.device, chunk_bytes=5 * 48 * 48)  # several chunks
    dev = data.train.batch(pos)
    assert dev.images.device.type == "cuda" and dev.target.device.type == "cuda"
    assert torch.equal(dev.images.cpu(), host.images) and torch.equal(dev.boxes.cpu(), host.boxes)
    assert torch.equal(dev.has_box.cpu(), host.has_box) and torch.equal(dev.index, host.index)


@cuda
def test_compiled_training_run(tmp_path: Path, lesion_data: Path) -> None:
    cfg = tiny_config(tmp_path, lesion_data, "train.pretrained=false", "train.optim.epochs=1", "run.compile=true",
                      "run.device=cuda")
    out = run_train(cfg)
    assert 0 <= out["accuracy"] <= 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@cuda
def test_one_process_nccl_group_sync_bn_then_compile(tmp_path: Path, lesion_data: Path) -> None:
    cfg = tiny_config(tmp_path, lesion_data, "train.pretrained=false", "run.precision=fp32")
    data = prepare_data(cfg, progress=False)
    torch.distributed.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        weights = []
        for compile in (False, True):
            torch.manual_seed(0)
            task = _task(cfg, data, "cuda:0", "fp32")
            modules = task.modules()
            for mod in modules.values():
                mod.to(task.rt.device).train()
            step = _wrap(task, modules, task.rt, sync_bn=True, compile=compile)
            assert isinstance(step, nn.parallel.DistributedDataParallel)
            assert any(isinstance(m, nn.SyncBatchNorm) for m in task.model.modules())
            assert not any(type(m) is nn.BatchNorm2d for m in task.model.modules())
            if compile:  # compiled after the conversion: the compiled blocks hold the SyncBatchNorm layers
                assert task.model.layer1._compiled_call_impl is not None
            opt = torch.optim.SGD([p for mod in modules.values() for p in mod.parameters()], lr=0.01)
            batch = next(task.train_batches(0))
            loss = step(batch, torch.Generator().manual_seed(0))["loss"]
            loss.backward()
            opt.step()
            weights.append({k: v.detach().cpu().clone() for k, v in task.model.state_dict().items()})
        for k, v in weights[0].items():
            assert torch.allclose(v.float(), weights[1][k].float(), atol=1e-4), k
    finally:
        torch.distributed.destroy_process_group()
