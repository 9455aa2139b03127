"""CPU latency of the inference network: eager PyTorch vs ONNX Runtime, measured in one run.

A ResNet18 classifier (1 input channel, random weights: latency does not depend on them) is saved as
training saves it and exported with ``deeppneumonia.inference.export.export_onnx`` (which checks parity). Both
runtimes get the same number of threads. Reported: batch 1 latency (median and p90 over ``--runs``
timed runs after ``--warmup`` untimed ones) and batch 16 throughput, with the ORT / PyTorch ratio.

Usage: python benchmarks/export_latency.py [--size 224] [--threads 2] [--runs 50] [--batch 16]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from deeppneumonia.config import load_config
from deeppneumonia.inference.export import export_onnx
from deeppneumonia.models.checkpoint import save_weights
from deeppneumonia.models.factory import build_classifier
from deeppneumonia.training.supervised import model_metadata


def make_checkpoint(path: Path, size: int, arch: str = "resnet18") -> Path:
    """A random-weight classifier checkpoint in the training format (weights + metadata)."""
    torch.manual_seed(0)
    model = build_classifier(2, arch)
    meta = model_metadata(load_config("quick", [f"data.size={size}"]), ("normal", "pneumonia"), "multiclass", arch)
    save_weights(path, model.state_dict(), meta)
    return path


def timings(fn: Callable[[], object], warmup: int, runs: int) -> np.ndarray:
    """Seconds per call, ``runs`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - t0
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batch-runs", type=int, default=10)
    ap.add_argument("--arch", default="resnet18")
    args = ap.parse_args()

    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(Path(tmp) / "model.safetensors", args.size, args.arch)
        onnx_path = Path(tmp) / "model.onnx"
        report = export_onnx(ckpt, onnx_path)
        from deeppneumonia.inference.predictor import Predictor

        model = Predictor.from_checkpoint(ckpt, device="cpu").model.eval()
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])

        rng = np.random.default_rng(0)
        x1 = rng.standard_normal((1, 1, args.size, args.size), dtype=np.float32)
        xb = rng.standard_normal((args.batch, 1, args.size, args.size), dtype=np.float32)
        t1, tb = torch.from_numpy(x1), torch.from_numpy(xb)

        def eager(x: torch.Tensor) -> Callable[[], object]:
            def run() -> object:
                with torch.inference_mode():
                    return model(x)
            return run

        def onnx(x: np.ndarray) -> Callable[[], object]:
            return lambda: session.run(None, {"image": x})

        rows = {}
        for name, f1, fb in (("PyTorch eager", eager(t1), eager(tb)), ("ONNX Runtime", onnx(x1), onnx(xb))):
            lat = timings(f1, args.warmup, args.runs) * 1e3
            thr = args.batch / timings(fb, max(1, args.warmup // 5), args.batch_runs)
            rows[name] = (float(np.median(lat)), float(np.percentile(lat, 90)), float(np.median(thr)))
    load_after = os.getloadavg()

    print(f"### CPU inference latency, {args.arch} at {args.size} px, fp32, {args.threads} threads\n")
    print(f"| runtime | batch 1 median (ms) | batch 1 p90 (ms) | batch {args.batch} throughput (img/s) |")
    print("| --- | ---: | ---: | ---: |")
    for name, (med, p90, thr) in rows.items():
        print(f"| {name} | {med:.1f} | {p90:.1f} | {thr:.1f} |")
    (tm, tp, tt), (om, op, ot) = rows["PyTorch eager"], rows["ONNX Runtime"]
    print(f"| ratio ORT / PyTorch | {om / tm:.2f} | {op / tp:.2f} | {ot / tt:.2f} |")
    print(f"\n{args.runs} timed runs after {args.warmup} warm-up runs (batch 1); {args.batch_runs} runs of batch "
          f"{args.batch}. ONNX parity with PyTorch: max |diff| {report['max_abs_diff']:.1e}.")
    print(f"Machine: {cpu_name()}, {os.cpu_count()} logical CPUs, {platform.machine()}; torch {torch.__version__}, "
          f"onnxruntime {ort.__version__}; load average before/after "
          f"{load_before[0]:.2f}/{load_after[0]:.2f} (other jobs share the cores when it is above 0).")


if __name__ == "__main__":
    main()
