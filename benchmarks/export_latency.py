"""CPU latency of the inference network: eager PyTorch fp32, ONNX Runtime fp32 and int8, and the cost of CAM.

A ResNet18 classifier (1 input channel, random weights unless ``--checkpoint``: latency does not depend on them)
is exported with ``deeppneumonia.inference.export`` (fp32 with its parity check, then static int8 QDQ with
per-channel weights, calibrated on ``--calibration`` images or, without it, on random inputs: fine for latency,
not for accuracy; use ``--labelled`` for the accuracy parity). All runtimes get the same threads. Reported per
runtime: batch 1 latency (median, p90) and batch ``--batch`` throughput; then the exact layer4 CAM on top of the
forward pass (``Predictor.predict(heatmaps=True)``) against the forward alone and against pytorch-grad-cam.

The load average is printed before and after; when the 1-minute load is above 0.5 per core the headline is
marked BUSY MACHINE (the numbers are then upper bounds, not the machine's speed).

Usage: python benchmarks/export_latency.py [--size 224] [--threads 2] [--runs 50] [--batch 16]
       [--checkpoint C --calibration CACHE_OR_FOLDER --labelled FOLDER]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import headline, load_line

from deeppneumonia.config import load_config
from deeppneumonia.inference.export import export_onnx, int8_parity, quantize_int8
from deeppneumonia.models.checkpoint import save_weights
from deeppneumonia.models.factory import build_classifier
from deeppneumonia.training.supervised import model_metadata

FP32_FLOOR_MS = 22.0  # 3.47 GFLOP per 224-px image / 157 GFLOP/s peak of 2 AVX2 cores (docs/serving.md)


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
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--batch-runs", type=int, default=10)
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--checkpoint", type=Path, default=None, help="a model.safetensors (default: random weights)")
    ap.add_argument("--calibration", type=Path, default=None, help="int8 calibration: cache folder or image folder")
    ap.add_argument("--labelled", type=Path, default=None, help="folder with one sub-folder per class: AUROC parity")
    args = ap.parse_args()

    from deeppneumonia.inference.explain import library_cam
    from deeppneumonia.inference.export import calibration_inputs
    from deeppneumonia.inference.onnx import ort_session
    from deeppneumonia.inference.predictor import Predictor

    torch.set_num_threads(args.threads)
    before, busy_before = load_line()
    rows: dict[str, tuple[float, float, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or make_checkpoint(Path(tmp) / "model.safetensors", args.size, args.arch)
        pred = Predictor.from_checkpoint(ckpt, device="cpu")
        size = pred.size
        onnx_path = Path(tmp) / "model.onnx"
        report = export_onnx(ckpt, onnx_path)
        rng = np.random.default_rng(0)
        calib = (calibration_inputs(args.calibration, pred.pre, 64) if args.calibration is not None
                 else rng.standard_normal((32, 1, size, size), dtype=np.float32))
        int8_path = quantize_int8(onnx_path, Path(tmp) / "model.int8.onnx", calib)
        parity = None
        if args.labelled is not None:
            from deeppneumonia.data.imageio import read_image
            from deeppneumonia.inference.export import labelled_folder

            files, labels = labelled_folder(args.labelled, pred.classes)
            xs = np.concatenate([pred.pre.from_pixels(read_image(f).pixels).numpy() for f in files])
            parity = int8_parity(onnx_path, int8_path, xs, labels)
        model = pred.model.eval()
        s32, s8 = ort_session(onnx_path, args.threads), ort_session(int8_path, args.threads)

        x1 = rng.standard_normal((1, 1, size, size), dtype=np.float32)
        xb = rng.standard_normal((args.batch, 1, size, size), dtype=np.float32)
        t1, tb = torch.from_numpy(x1), torch.from_numpy(xb)

        def eager(x: torch.Tensor) -> Callable[[], object]:
            def run() -> object:
                with torch.inference_mode():
                    return model(x)
            return run

        def onnx(session: object, x: np.ndarray) -> Callable[[], object]:
            return lambda: session.run(None, {"image": x})  # type: ignore[attr-defined]

        for name, f1, fb in (("fp32 PyTorch eager", eager(t1), eager(tb)), ("fp32 ONNX Runtime", onnx(s32, x1),
                                                                            onnx(s32, xb)),
                             ("int8 ONNX Runtime (QDQ, per-channel)", onnx(s8, x1), onnx(s8, xb))):
            lat = timings(f1, args.warmup, args.runs) * 1e3
            thr = args.batch / timings(fb, max(1, args.warmup // 5), args.batch_runs)
            rows[name] = (float(np.median(lat)), float(np.percentile(lat, 90)), float(np.median(thr)))

        # CAM cost: forward alone vs forward + exact layer4 CAM (same pass) vs pytorch-grad-cam (forward + backward)
        cam_runs = max(10, args.runs // 2)
        fwd = timings(lambda: pred.predict(t1, heatmaps=False), 3, cam_runs)
        cam = timings(lambda: pred.predict(t1, heatmaps=True), 3, cam_runs)
        lib = timings(lambda: library_cam(model, t1, 0), 2, max(5, cam_runs // 3))
        fwd_b = timings(lambda: pred.predict(tb, heatmaps=False), 1, 3)
        cam_b = timings(lambda: pred.predict(tb, heatmaps=True), 1, 3)
    after, busy_after = load_line()

    print(f"### CPU inference, {args.arch} at {size} px, {args.threads} threads\n")
    print(f"| runtime | batch 1 median (ms) | batch 1 p90 (ms) | batch {args.batch} throughput (img/s) | "
          "vs fp32 eager batch 1 (img/s) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    base = 1e3 / rows["fp32 PyTorch eager"][0]
    for name, (med, p90, thr) in rows.items():
        print(f"| {name} | {med:.1f} | {p90:.1f} | {thr:.1f} | {thr / base:.2f}x |")
    print(f"\n{args.runs} timed runs after {args.warmup} warm-up runs (batch 1); {args.batch_runs} runs of batch "
          f"{args.batch}. fp32 ONNX parity with PyTorch: max |diff| {report['max_abs_diff']:.1e}; int8 calibrated on "
          f"{len(calib)} {'images from ' + str(args.calibration) if args.calibration else 'random inputs'}.")
    if parity is not None:
        print(f"int8 vs fp32 on {args.labelled} ({parity['images']} images): max |prob diff| "
              f"{parity['max_abs_prob_diff']:.4f}, class agreement {100 * parity['class_agreement']:.1f} %, AUROC "
              f"fp32 {parity['auroc_fp32']:.4f} int8 {parity['auroc_int8']:.4f} ({parity['auroc_diff']:+.4f}).")
    m = np.median
    print("\n| CAM (eager PyTorch, layer4) | batch 1 median (ms) | on top of the forward |")
    print("| --- | ---: | ---: |")
    print(f"| forward only | {m(fwd) * 1e3:.1f} | - |")
    print(f"| forward + exact CAM (same pass) | {m(cam) * 1e3:.1f} | {100 * (m(cam) / m(fwd) - 1):+.1f} % |")
    print(f"| pytorch-grad-cam Grad-CAM (forward + backward) | {m(lib) * 1e3:.1f} | "
          f"{100 * (m(lib) / m(fwd) - 1):+.1f} % |")
    print(f"| batch {args.batch}: forward + exact CAM vs forward | {m(cam_b) * 1e3:.1f} vs {m(fwd_b) * 1e3:.1f} | "
          f"{100 * (m(cam_b) / m(fwd_b) - 1):+.1f} % |")
    print(f"\nMachine: {cpu_name()}, {os.cpu_count()} logical CPUs, {platform.machine()}; torch {torch.__version__}, "
          f"onnxruntime {__import__('onnxruntime').__version__}.")
    print(f"Before: {before}. After: {after}.")
    i8, f32 = rows["int8 ONNX Runtime (QDQ, per-channel)"][0], rows["fp32 ONNX Runtime"][0]
    print("\n" + headline(f"batch-1 latency at {size} px: int8 {i8:.1f} ms (target <= 15 ms), fp32 ONNX {f32:.1f} ms "
                          f"(fp32 floor {FP32_FLOOR_MS:.0f} ms at 224 px on 2 AVX2 cores); exact CAM costs "
                          f"{100 * (m(cam) / m(fwd) - 1):+.1f} % on top of the forward", busy_before, busy_after))


if __name__ == "__main__":
    main()
