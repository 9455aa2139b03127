"""Load test of `deeppneumonia serve`: concurrent uploads against a real uvicorn server on loopback.

Starts ``deeppneumonia serve`` in a subprocess on a free 127.0.0.1 port (with ``--checkpoint``, or a
random-weight ResNet18 saved in the training format), waits for /api/health, sends one warm-up request,
then fires ``--requests`` uploads at once (all in flight together, ``--concurrency`` connections) for each
mode (without and with Grad-CAM) and prints latency percentiles, throughput and the error count.

Usage: python benchmarks/serve_load.py [--checkpoint model.safetensors] [--requests 50] [--concurrency 50]
       [--image scan.png | --image-size 1024] [--size 224]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image


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


def start_server(checkpoint: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "deeppneumonia.cli", "-q", "serve", "--checkpoint", str(checkpoint),
           "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
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


async def fire(url: str, data: bytes, n: int, concurrency: int, heatmap: bool) -> tuple[list[float], int, float]:
    """Latencies (s) of the successful requests, the error count and the wall time."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        async def one() -> tuple[float, bool]:
            t0 = time.perf_counter()
            try:
                r = await client.post("/api/predict", params={"heatmap": str(heatmap).lower()},
                                      files={"file": ("scan.png", data, "image/png")})
                ok = r.status_code == 200 and len(r.json()["probabilities"]) > 0
            except httpx.HTTPError:
                ok = False
            return time.perf_counter() - t0, ok

        t0 = time.perf_counter()
        results = await asyncio.gather(*(one() for _ in range(n)))
        wall = time.perf_counter() - t0
    return [t for t, ok in results if ok], sum(not ok for _, ok in results), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=None, help="default: random-weight ResNet18")
    ap.add_argument("--size", type=int, default=224, help="input size of the random-weight model")
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--image", type=Path, default=None, help="image to upload (default: synthetic PNG)")
    ap.add_argument("--image-size", type=int, default=1024, help="side of the synthetic PNG")
    args = ap.parse_args()

    data = args.image.read_bytes() if args.image else synthetic_png(args.image_size)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint
        if ckpt is None:
            sys.path.insert(0, str(Path(__file__).parent))
            from export_latency import make_checkpoint

            ckpt = make_checkpoint(Path(tmp) / "model.safetensors", args.size)
        proc = start_server(ckpt, port, Path(tmp) / "server.log")
        try:
            wait_ready(url, proc)
            rows = []
            for heatmap in (False, True):
                asyncio.run(fire(url, data, 1, 1, heatmap))  # warm-up
                lat, errors, wall = asyncio.run(fire(url, data, args.requests, args.concurrency, heatmap))
                ms = np.asarray(lat) * 1e3 if lat else np.asarray([np.nan])
                rows.append((("with" if heatmap else "without") + " Grad-CAM", errors, *np.percentile(ms, [50, 95, 99]),
                             len(lat) / wall, wall))
            alive = httpx.get(f"{url}/api/health", timeout=5).status_code == 200
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    load_after = os.getloadavg()

    what = args.image.name if args.image else f"synthetic {args.image_size}x{args.image_size} 8-bit PNG"
    print(f"### `deeppneumonia serve` under load: {args.requests} requests, {args.concurrency} concurrent\n")
    print("| mode | errors | p50 (ms) | p95 (ms) | p99 (ms) | throughput (req/s) | wall (s) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, errors, p50, p95, p99, thr, wall in rows:
        print(f"| {name} | {errors} | {p50:.0f} | {p95:.0f} | {p99:.0f} | {thr:.2f} | {wall:.1f} |")
    print(f"\nUpload: {what} ({len(data) / 1024:.0f} KiB); model: {ckpt if args.checkpoint else 'random-weight resnet18'} "
          f"at {args.size} px on CPU; server still healthy afterwards: {alive}.")
    print(f"Machine: {os.cpu_count()} logical CPUs; load average before/after {load_before[0]:.2f}/{load_after[0]:.2f} "
          "(the client runs on the same cores).")


if __name__ == "__main__":
    main()
