"""Load test of `deeppneumonia serve`: concurrent uploads against a real uvicorn server on loopback.

For each server configuration (``--configs``: ``batch1`` = ``--max-batch 1``, one forward pass per request, as
before coalescing; ``coalesced`` = the default queue, up to 16 requests per forward pass within 5 ms;
``ort1`` / ``ort`` = the same two with ``--runtime onnxruntime``; ``int8`` = coalesced, serving the model
exported to int8 ONNX with features; ``bf16`` = coalesced PyTorch with ``--precision bf16``, for CPUs with native
bf16), starts ``deeppneumonia serve`` in a
subprocess on a free 127.0.0.1 port (with ``--checkpoint``, or a random-weight ResNet18 saved in the training
format), waits for /api/health, sends one warm-up request, then fires ``--requests`` uploads at once (all in
flight together, ``--concurrency`` connections) for each mode (without and with the CAM overlay) and prints
latency percentiles, throughput, the mean batch size and the error count. The load average is printed before
and after; above 0.5 per core the headline is marked BUSY MACHINE.

Usage: python benchmarks/serve_load.py [--checkpoint model.safetensors] [--requests 50] [--concurrency 50]
       [--image scan.png | --image-size 1024] [--size 224] [--configs batch1,coalesced,ort1,ort,int8,bf16]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _load import headline, load_line


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def synthetic_png(side: int) -> bytes:
    rng = np.random.default_rng(0)
    img = rng.normal(90, 12, (side, side))
    img[side // 4: side // 2, side // 5: side // 2] += 100
    buf = io.BytesIO()
    Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def start_server(checkpoint: Path, port: int, log: Path, extra: list[str]) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "deeppneumonia.cli", "-q", "serve", "--checkpoint", str(checkpoint),
           "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--max-concurrency", "8", *extra]
    with log.open("wb") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        try:
            if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not become ready")


async def fire(url: str, data: bytes, n: int, concurrency: int,
               heatmap: bool) -> tuple[list[float], int, float, float]:
    """Latencies (s) of the successful requests, the error count, the wall time and the mean batch size."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        async def one() -> tuple[float, bool, int]:
            t0 = time.perf_counter()
            batch = 0
            try:
                r = await client.post("/api/predict", params={"heatmap": str(heatmap).lower()},
                                      files={"file": ("scan.png", data, "image/png")})
                ok = r.status_code == 200 and len(r.json()["probabilities"]) > 0
                batch = int(r.json().get("batch_size", 1)) if ok else 0
            except httpx.HTTPError:
                ok = False
            return time.perf_counter() - t0, ok, batch

        t0 = time.perf_counter()
        results = await asyncio.gather(*(one() for _ in range(n)))
        wall = time.perf_counter() - t0
    good = [b for _, ok, b in results if ok]
    return ([t for t, ok, _ in results if ok], sum(not ok for _, ok, _ in results), wall,
            float(np.mean(good)) if good else float("nan"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=None, help="default: random-weight ResNet18")
    ap.add_argument("--size", type=int, default=224, help="input size of the random-weight model")
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--image", type=Path, default=None, help="image to upload (default: synthetic PNG)")
    ap.add_argument("--image-size", type=int, default=1024, help="side of the synthetic PNG")
    ap.add_argument("--configs", default="batch1,coalesced",
                    help="comma-separated: batch1, coalesced, ort1, ort, int8, bf16")
    args = ap.parse_args()

    data = args.image.read_bytes() if args.image else synthetic_png(args.image_size)
    before, busy_before = load_line()
    rows = []
    alive = True
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint
        if ckpt is None:
            from export_latency import make_checkpoint

            ckpt = make_checkpoint(Path(tmp) / "model.safetensors", args.size)
        for config in args.configs.split(","):
            served, extra = ckpt, []
            if config == "batch1":
                extra = ["--max-batch", "1"]
            elif config == "ort1":
                extra = ["--runtime", "onnxruntime", "--max-batch", "1"]
            elif config == "ort":
                extra = ["--runtime", "onnxruntime"]
            elif config == "bf16":
                extra = ["--precision", "bf16"]
            elif config == "int8":
                from deeppneumonia.inference.export import export_onnx, quantize_int8
                from deeppneumonia.inference.predictor import Predictor

                onnx_path = Path(tmp) / "model.onnx"
                export_onnx(ckpt, onnx_path, with_features=True)
                rng = np.random.default_rng(0)
                s = Predictor.from_checkpoint(ckpt, "cpu").size
                served = quantize_int8(onnx_path, Path(tmp) / "model.int8.onnx",
                                       rng.standard_normal((32, 1, s, s), dtype=np.float32))
            elif config != "coalesced":
                raise SystemExit(f"unknown config {config!r}")
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            proc = start_server(served, port, Path(tmp) / f"server-{config}.log", extra)
            try:
                wait_ready(url, proc)
                for heatmap in (False, True):
                    asyncio.run(fire(url, data, 2, 2, heatmap))  # warm-up
                    lat, errors, wall, batch = asyncio.run(fire(url, data, args.requests, args.concurrency, heatmap))
                    ms = np.asarray(lat) * 1e3 if lat else np.asarray([np.nan])
                    rows.append((config, "with" if heatmap else "without", errors, *np.percentile(ms, [50, 95, 99]),
                                 len(lat) / wall, wall, batch))
                alive = alive and httpx.get(f"{url}/api/health", timeout=5).status_code == 200
            finally:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    after, busy_after = load_line()

    what = args.image.name if args.image else f"synthetic {args.image_size}x{args.image_size} 8-bit PNG"
    print(f"### `deeppneumonia serve` under load: {args.requests} requests, {args.concurrency} concurrent\n")
    print("| server | CAM overlay | errors | p50 (ms) | p95 (ms) | p99 (ms) | throughput (req/s) | wall (s) | mean batch |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for config, heat, errors, p50, p95, p99, thr, wall, batch in rows:
        print(f"| {config} | {heat} | {errors} | {p50:.0f} | {p95:.0f} | {p99:.0f} | {thr:.2f} | {wall:.1f} | {batch:.1f} |")
    print(f"\nUpload: {what} ({len(data) / 1024:.0f} KiB); model: {ckpt if args.checkpoint else 'random-weight resnet18'} "
          f"at {args.size} px on CPU; servers still healthy afterwards: {alive}. The client runs on the same cores.")
    print(f"Before: {before}. After: {after}.")
    thr = {(r[0], r[1]): r[6] for r in rows}
    if ("batch1", "without") in thr and ("coalesced", "without") in thr:
        gain = [thr[("coalesced", h)] / thr[("batch1", h)] for h in ("without", "with")]
        errs = sum(r[2] for r in rows)
        print("\n" + headline(f"coalescing: {gain[0]:.2f}x the batch-1 throughput without overlays, {gain[1]:.2f}x "
                                f"with; {errs} errors in {len(rows) * args.requests} requests", busy_before, busy_after))


if __name__ == "__main__":
    main()
