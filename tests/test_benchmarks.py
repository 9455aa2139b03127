"""CPU smoke runs of the benchmark scripts (tiny sizes, seconds): they must not rot between GPU loans."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import make_lesion_csv

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark(name: str) -> ModuleType:
    sys.path.insert(0, str(ROOT / "benchmarks"))  # the scripts import their helper _table.py
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


def test_distributed_scaling_smoke_with_and_without_compile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = load_benchmark("distributed_scaling")
    csv_path = make_lesion_csv(tmp_path / "data", n=24, size=32)
    args = mod.parse_args(["--data", str(csv_path), "--size", "32", "--batch", "4", "--steps", "1", "--warmup", "0",
                           "--precision", "fp32", "--cache-dir", str(tmp_path / "cache")])
    result = mod.measure(args)
    assert result["world"] == 1 and result["pretrain"] > 0 and result["train"] > 0
    assert set(mod.model_only(args, 4)) == {"pretrain", "train"}
    compiled: list[str] = []  # --compile reaches both the toolkit's step and the reference (compiling itself is slow)
    monkeypatch.setattr("deeppneumonia.training.loop.compile_blocks", lambda m: compiled.append(type(m).__name__))
    monkeypatch.setattr("deeppneumonia.runtime.device.compile_blocks", lambda m: compiled.append("reference"))
    args.compile = True
    assert mod.measure(args)["train"] > 0 and mod.model_only(args, 4)["train"] > 0
    assert {"XRayResNet", "Projector", "MGACRHeads", "reference"} <= set(compiled)


def test_mgacr_overhead_smoke(tmp_path: Path) -> None:
    mod = load_benchmark("mgacr_overhead")
    csv_path = make_lesion_csv(tmp_path / "data", n=24, size=32)
    args = mod.parse_args(["--preset", "siim-128-cpu", "--data", str(csv_path), "--size", "32", "--batch", "4",
                           "--steps", "1", "--rounds", "2", "--warmup", "0", "--precision", "fp32",
                           "--cache-dir", str(tmp_path / "cache"), "--set", "data.val_fraction=0.25",
                           "data.test_fraction=0.25"])
    r = mod.measure(args)
    assert list(r["rates"]) == ["plain", "MGACR, preset layers [2,3]", "MGACR, all four layers"]
    assert all(v > 0 for v in r["rates"].values()) and r["grad_norm_steps"] == 2 and r["step_seconds"] > 0


def test_step_levers_smoke(tmp_path: Path) -> None:
    mod = load_benchmark("step_levers")
    csv_path = make_lesion_csv(tmp_path / "data", n=24, size=64)
    args = mod.parse_args(["--data", str(csv_path), "--size", "64", "--batch", "4", "--steps", "1", "--rounds", "1",
                           "--warmup", "0", "--cache-dir", str(tmp_path / "cache"), "--set", "data.val_fraction=0.25",
                           "data.test_fraction=0.25"])
    r = mod.measure(args)
    assert list(r["sides"].values()) == [64, 64, 64, 32, 32]  # side - 32 and side - 64, never below 32
    assert all(v > 0 for v in r["rates"].values())


def test_serve_costs_smoke() -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")  # serve_load.py, whose synthetic upload this script reuses
    mod = load_benchmark("serve_costs")
    rows = mod.measure(mod.parse_args(["--image-size", "96", "--size", "32", "--batch", "2", "--runs", "2"]))
    assert [r[0] for r in rows][:3] == ["multipart parse", "decode", "preprocess"]
    assert len(rows) == 5 and all(wall > 0 and core >= wall for _, wall, core in rows)


def test_serve_load_interleaves_rounds_against_a_before_version() -> None:
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "serve_load.py"), "--image-size", "96", "--size",
                          "32", "--requests", "3", "--concurrency", "2", "--rounds", "2", "--modes", "without",
                          "--configs", "before,coalesced", "--before-src", str(root / "src")],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| before") or line.startswith("| coal")]
    assert [r[1].strip() for r in rows] == ["before", "coalesced"]
    assert all(r[3].strip() == "0" and float(r[7]) > 0 and float(r[10]) > 0 for r in rows)  # no errors, a rate, CPU
    assert "throughput against `before`" in out and "coalesced" in out.split("throughput against")[1]


def test_time_to_accuracy_smoke_records_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = load_benchmark("time_to_accuracy")
    csv_path = make_lesion_csv(tmp_path / "data", n=24, size=32)
    argv = ["--data", str(csv_path), "--current", "quick-boxes", "--improved", "quick-boxes", "--improved-set",
            "train.optim.resize_from=32", "--models", "plain", "mgacr", "--seeds", "0", "--size", "64", "--epochs",
            "2", "--metric", "map", "--target", "0.0", "--cache-dir", str(tmp_path / "cache"), "--out",
            str(tmp_path / "out"), "--record", str(tmp_path / "rec"), "--set", "data.val_fraction=0.25",
            "data.test_fraction=0.25", "data.source=auto", "train.mgacr.grad_norm_steps=0"]
    s = mod.main(argv)
    rows = {(r["recipe"], r["model"]): r for r in s["rows"]}
    assert set(rows) == {(c, m) for c in ("quick-boxes", "quick-boxes train.optim.resize_from=32")
                         for m in ("plain", "mgacr")}
    assert all(r["to_target"][0]["epoch"] == 1 for r in rows.values())  # target 0: the first epoch reaches it
    assert s["reference_minutes"] > 0
    for name in ("current_plain_seed0", "improved_mgacr_seed0"):
        assert (tmp_path / "rec" / f"{name}.json").is_file() and (tmp_path / "rec" / f"{name}_metrics.jsonl").is_file()
    # the mgacr model trains the MGACR terms, the plain one none
    mg = [json.loads(x) for x in (tmp_path / "rec" / "current_mgacr_seed0_metrics.jsonl").read_text().splitlines()]
    pl = [json.loads(x) for x in (tmp_path / "rec" / "current_plain_seed0_metrics.jsonl").read_text().splitlines()]
    assert "train_att_pos" in mg[0] and "train_att_pos" not in pl[0]
    # a rerun reads every run back from its record and trains nothing
    monkeypatch.setattr(mod, "one_run", lambda *a: pytest.fail("a recorded run was trained again"))
    again = mod.main(argv)
    assert [r["final_val"] for r in again["rows"]] == [r["final_val"] for r in s["rows"]]
