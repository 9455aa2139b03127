"""Where one upload's CPU time goes in `deeppneumonia serve`: each stage on its own, on the same machine.

``serve_load.py`` measures the whole service (HTTP, queue, threads, the client on the same cores); this script
times the stages an upload passes through, one at a time, so their sum can be set against the service's rate:

* ``multipart parse``: the upload's multipart body, parsed in memory (``serve.app.multipart_parts``);
* ``decode``: the image bytes to float pixels (``data.readers.pil.decode_pil``; a synthetic 8-bit PNG of
  ``--image-size`` px, the upload of ``serve_load.py``);
* ``preprocess``: resize to the network's input exactly as the training cache does, then normalise;
* ``forward, <runtime>``: the network on a batch of ``--batch`` inputs, per image, for eager PyTorch fp32 and
  ONNX Runtime int8 (QDQ, calibrated on random inputs: fine for time, not for accuracy), with ``--threads``.

Single-threaded stages report their wall time; the forward passes report wall time and core-milliseconds (wall x
threads, an upper bound). The last line is the rate the stages alone would allow on all cores: compare it with
``serve_load.py``'s rows *without* the overlay (``heatmap=false``; the overlay PNG is not timed here). The load average
is printed; above 0.5 per core the headline is marked BUSY MACHINE.

Usage: python benchmarks/serve_costs.py [--image-size 1024] [--size 224] [--batch 16] [--threads 2] [--runs 20]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import headline, load_line
from export_latency import make_checkpoint, timings
from serve_load import synthetic_png

from deeppneumonia.data.readers.pil import decode_pil
from deeppneumonia.inference.export import export_onnx, quantize_int8
from deeppneumonia.inference.onnx import OnnxPredictor
from deeppneumonia.inference.predictor import Predictor
from deeppneumonia.serve.app import multipart_parts


def measure(args: argparse.Namespace) -> list[tuple[str, float, float]]:
    """(stage, wall ms per image, core-ms per image) of each stage."""
    with tempfile.TemporaryDirectory() as folder:
        return _measure(args, Path(folder))


def _measure(args: argparse.Namespace, tmp: Path) -> list[tuple[str, float, float]]:
    torch.set_num_threads(args.threads)
    png = synthetic_png(args.image_size)
    body = (b'--bound\r\nContent-Disposition: form-data; name="file"; filename="scan.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + png + b"\r\n--bound--\r\n")
    ckpt = make_checkpoint(tmp / "model.safetensors", args.size)
    export_onnx(ckpt, tmp / "model.onnx", with_features=True)
    calib = np.random.default_rng(0).standard_normal((8, 1, args.size, args.size), dtype=np.float32)
    int8 = OnnxPredictor.from_file(quantize_int8(tmp / "model.onnx", tmp / "model.int8.onnx", calib),
                                   threads=args.threads)
    fp32 = Predictor.from_checkpoint(ckpt, "cpu")
    pixels = decode_pil(png, "PNG", "scan.png", 10**9, 10**6).pixels
    x = torch.cat([fp32.preprocess(pixels)] * args.batch)

    def ms(fn: object, runs: int) -> float:
        return float(np.median(timings(fn, 2, runs))) * 1e3  # type: ignore[arg-type]

    rows = [("multipart parse", ms(lambda: multipart_parts(body, "multipart/form-data; boundary=bound"), args.runs)),
            ("decode", ms(lambda: decode_pil(png, "PNG", "scan.png", 10**9, 10**6), args.runs)),
            ("preprocess", ms(lambda: fp32.preprocess(pixels), args.runs))]
    out = [(name, t, t) for name, t in rows]
    with torch.inference_mode():
        for name, pred in (("forward, PyTorch fp32", fp32), ("forward, ONNX Runtime int8", int8)):
            t = ms(lambda p=pred: p.predict(x, False), max(3, args.runs // 4)) / args.batch  # type: ignore[misc]
            out.append((f"{name} (batch {args.batch})", t, t * args.threads))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image-size", type=int, default=1024, help="side of the synthetic 8-bit PNG upload")
    p.add_argument("--size", type=int, default=224, help="the network's input size")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=20)
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    before, busy = load_line()
    rows = measure(args)
    after, _ = load_line()
    print(f"{args.image_size}-px 8-bit PNG upload, {args.size}-px input, {args.threads} threads, "
          f"{os.cpu_count()} logical CPUs, torch {torch.__version__}. {before} before, {after} after.\n")
    print("| stage | wall ms per image | core-ms per image |")
    print("|---|---:|---:|")
    for name, wall, core in rows:
        print(f"| {name} | {wall:.2f} | {core:.2f} |")
    cores = os.cpu_count() or 1
    for runtime in ("PyTorch fp32", "ONNX Runtime int8"):
        total = sum(c for n, _, c in rows if not n.startswith("forward") or runtime in n)
        print("\n" + headline(f"with {runtime}: {total:.1f} core-ms per upload, at most {cores * 1000 / total:.0f} "
                              f"uploads/s on {cores} cores from these stages alone", busy, False))


if __name__ == "__main__":
    main()
