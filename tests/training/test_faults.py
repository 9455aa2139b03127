"""kill -9 at random points of a short run (also between the metrics append and the state save), resume, and
compare with an uninterrupted run: same final weights, same metrics log (timings aside), no temp files left."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import make_lesion_csv

ROOT = Path(__file__).resolve().parents[2]
TIMING = {"train_seconds", "images_per_second"}


def _run(data: Path, run_dir: Path, cache: Path, kill: str = "none") -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "tests.training.fault_worker", str(data), str(run_dir), str(cache), kill],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.returncode


def _metrics(run_dir: Path) -> list[dict[str, object]]:
    lines = (run_dir / "train" / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    data = make_lesion_csv(tmp_path / "data", n=24, size=32)
    cache = tmp_path / "cache"
    assert _run(data, tmp_path / "ref", cache) == 0
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    # 2 epochs x 3 steps; with run.checkpoint_minutes=0, last.pt is written after steps 1 and 2 and at each epoch end
    kills = ["before-epoch-save:1",  # epoch 1's metrics line is written, its state is not
             rng.choice([f"step:{rng.randint(1, 3)}", f"after-save:{rng.randint(1, 2)}",
                         f"before-save:{rng.randint(1, 2)}"])]
    run_dir = tmp_path / "killed"
    assert _run(data, run_dir, cache, kills[0]) == -signal.SIGKILL
    assert len(_metrics(run_dir)) == 1  # the line the resumed run must not duplicate
    assert _run(data, run_dir, cache, kills[1]) == -signal.SIGKILL, (kills, seed)
    assert _run(data, run_dir, cache) == 0, seed

    assert _metrics(run_dir) == _metrics(tmp_path / "ref"), (kills, seed)
    assert [m["epoch"] for m in _metrics(run_dir)] == [1, 2]
    ref, got = load_file(str(tmp_path / "ref" / "train" / "model.safetensors")), load_file(
        str(run_dir / "train" / "model.safetensors"))
    assert set(ref) == set(got)
    for k, v in ref.items():
        assert torch.allclose(v.float(), got[k].float(), atol=1e-5), (k, kills, seed)
    test_ref = json.loads((tmp_path / "ref" / "test_metrics.json").read_text())
    test_got = json.loads((run_dir / "test_metrics.json").read_text())
    assert test_got["accuracy"] == pytest.approx(test_ref["accuracy"]) and test_got["best_epoch"] == test_ref["best_epoch"]
    assert not list(run_dir.rglob(".*.tmp-*")), "temporary files left behind"
    mode = (run_dir / "train" / "model.safetensors").stat().st_mode & 0o777
    assert mode == (run_dir / "config.yaml").stat().st_mode & 0o777
