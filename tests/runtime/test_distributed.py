"""Two processes under torchrun (gloo, CPU): the ranks agree, and one DDP step equals one process on the global batch."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deeppneumonia.data.batches import CachedSplit
from deeppneumonia.training.loop import fit
from deeppneumonia.training.pipeline import prepare_data
from tests.conftest import make_lesion_csv
from tests.runtime.distributed_worker import config, global_batch_slices, make_task, step_generator

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict]]:
    tmp = tmp_path_factory.mktemp("ddp")
    csv_path = make_lesion_csv(tmp / "data", n=48, size=48)
    out = tmp / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src") + os.pathsep + str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "runtime" / "distributed_worker.py"), str(csv_path), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]
    return csv_path, out, ranks


def _reference_step(stage: str, csv_path: Path, out: Path) -> tuple[float, dict[str, torch.Tensor]]:
    """One process, the same global batch: each rank's slice with that rank's draws, BN per slice as under DDP."""
    cfg = config(csv_path, out)
    data = prepare_data(cfg, progress=False)
    train: CachedSplit = data.train
    task, _ = make_task(stage, cfg, train, data.val, data.manifest.classes)
    modules = task.modules()
    for m in modules.values():
        m.train()
    slices = global_batch_slices(train, 2)
    if stage == "pretrain":  # InfoNCE over the 2N views of the global batch (negatives from both slices)
        z = [task._project(task._views(b, step_generator(r))) for r, b in enumerate(slices)]
        loss = task.loss(torch.cat([a for a, _ in z]), torch.cat([b for _, b in z]))
    else:  # the mean of the per-slice losses is the mean over the global batch (equal slices)
        loss = torch.stack([task.training_step(b, step_generator(r))["loss"] for r, b in enumerate(slices)]).mean()
    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.1)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach()), {f"{k}.{n}": p.detach() for k, m in modules.items() for n, p in m.named_parameters()}


@pytest.mark.parametrize("stage", ["pretrain", "train"])
def test_one_ddp_step_equals_one_process_on_the_global_batch(ddp_run, stage: str) -> None:
    csv_path, out, ranks = ddp_run
    ref_loss, ref_w = _reference_step(stage, csv_path, out)
    r0, r1 = ranks[0][f"{stage}_step"], ranks[1][f"{stage}_step"]
    assert r0["loss"] != pytest.approx(r1["loss"], abs=1e-6)  # the ranks really saw different images
    assert (r0["loss"] + r1["loss"]) / 2 == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)
    init, _ = make_task(stage, config(csv_path, out), *_splits(csv_path, out))
    w0 = {f"{k}.{n}": p.detach() for k, m in init.modules().items() for n, p in m.named_parameters()}
    ref_update = torch.cat([(ref_w[k] - w0[k]).flatten() for k in ref_w])
    ddp_update = torch.cat([(r0["weights"][k] - w0[k]).flatten() for k in ref_w])
    assert ref_update.abs().max() > 1e-4  # the step moved the weights, so the comparison means something
    for name in ref_w:
        torch.testing.assert_close(r0["weights"][name], r1["weights"][name], rtol=0, atol=1e-6)
    # the same update up to float summation order (all-reduce vs one backward): 0.1 % of its largest entry
    err = (ddp_update - ref_update).abs().max() / ref_update.abs().max()
    assert err < 1e-3, f"DDP update differs from the single-process one by {float(err):.2e} of its size"
    cos = torch.nn.functional.cosine_similarity(ddp_update, ref_update, dim=0)
    assert cos > 0.99999


def _splits(csv_path: Path, out: Path):  # type: ignore[no-untyped-def]
    data = prepare_data(config(csv_path, out), progress=False)
    return data.train, data.val, data.manifest.classes


def test_ranks_agree_after_training_and_only_rank0_writes(ddp_run) -> None:
    _, out, ranks = ddp_run
    for stage in ("pretrain", "train"):
        a, b = ranks[0][f"{stage}_fit"], ranks[1][f"{stage}_fit"]
        params = [k for k in a if "running_" not in k and "num_batches" not in k]
        assert params
        for k in params:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
        lines = (out / "run" / stage / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == 1  # one epoch, written once (by rank 0)
        rec = json.loads(lines[0])
        assert np.isfinite(rec["train_loss"])


def test_resume_at_another_world_size(ddp_run, tmp_path: Path) -> None:
    csv_path, out, _ = ddp_run
    cfg = config(csv_path, out)
    data = prepare_data(cfg, progress=False)
    task, rt = make_task("train", cfg, data.train, data.val, data.manifest.classes)
    run_dir = tmp_path / "train"  # a copy: the other tests read the 2-process run folder as it was left
    shutil.copytree(out / "run" / "train", run_dir)
    result = fit(task, dataclasses.replace(cfg.train.optim, epochs=2), run_dir, rt, seed=0, progress=False)
    assert result.epochs_run == 2  # epoch 1 came from the 2-process run's last.pt, epoch 2 ran here
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
