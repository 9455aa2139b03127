"""Load test of `deeppneumonia serve`: concurrent uploads against a real uvicorn server on loopback.

For each server configuration (``--configs``: ``batch1`` = ``--max-batch 1``, one forward pass per request, as
before coalescing; ``coalesced`` = the default queue, up to 16 requests per forward pass within 5 ms;
``ort1`` / ``ort`` = the same two with ``--runtime onnxruntime``; ``int8`` = coalesced, serving the model
exported to int8 ONNX with features; ``bf16`` = coalesced PyTorch with ``--precision bf16``, for CPUs with native
bf16; ``before`` = the code of another version, ``--before-src``, e.g. a ``git worktree`` of the commit before
issue 19, with its defaults), starts ``deeppneumonia serve`` in a subprocess on a free 127.0.0.1 port (with
``--checkpoint``, or a random-weight ResNet18 saved in the training format) and waits for /api/health; all servers
stay up. Then, ``--rounds`` times, for each server in turn and each mode (without and with the CAM overlay), it
sends a warm-up request and fires ``--requests`` uploads at once (all in flight together, ``--concurrency``
connections). Rounds are interleaved across servers, so a change of load hits every one of them alike. Printed:
latency percentiles, the median throughput over rounds (and its range), the mean batch size, the server's CPU
time per request (from /proc) and the error count. The load average is printed before and after; above 0.5 per
core the headline is marked BUSY MACHINE.

Usage: python benchmarks/serve_load.py [--checkpoint model.safetensors] [--requests 50] [--concurrency 50]
       [--image scan.png | --image-size 1024] [--size 224] [--configs batch1,coalesced,ort1,ort,int8,bf16,before]
       [--rounds 4] [--modes without,with] [--before-src /tmp/old/src]
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


def start_server(checkpoint: Path, port: int, log: Path, extra: list[str],
                 env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "deeppneumonia.cli", "-q", "serve", "--checkpoint", str(checkpoint),
           "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", "--max-concurrency", "8", *extra]
    with log.open("wb") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env)


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


def server_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc; 0.0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def served_model(config: str, ckpt: Path, tmp: Path) -> tuple[Path, list[str]]:
    """The file a configuration serves and its extra `serve` flags."""
    extra = {"batch1": ["--max-batch", "1"], "ort1": ["--runtime", "onnxruntime", "--max-batch", "1"],
             "ort": ["--runtime", "onnxruntime"], "bf16": ["--precision", "bf16"], "coalesced": [], "int8": [],
             "before": []}
    if config not in extra:
        raise SystemExit(f"unknown config {config!r}")
    if config != "int8":
        return ckpt, extra[config]
    from deeppneumonia.inference.export import export_onnx, quantize_int8
    from deeppneumonia.inference.predictor import Predictor

    onnx_path = tmp / "model.onnx"
    export_onnx(ckpt, onnx_path, with_features=True)
    s = Predictor.from_checkpoint(ckpt, "cpu").size
    calib = np.random.default_rng(0).standard_normal((32, 1, s, s), dtype=np.float32)
    return quantize_int8(onnx_path, tmp / "model.int8.onnx", calib), []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=None, help="default: random-weight ResNet18")
    ap.add_argument("--size", type=int, default=224, help="input size of the random-weight model")
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--image", type=Path, default=None, help="image to upload (default: synthetic PNG)")
    ap.add_argument("--image-size", type=int, default=1024, help="side of the synthetic PNG")
    ap.add_argument("--configs", default="batch1,coalesced",
                    help="comma-separated: batch1, coalesced, ort1, ort, int8, bf16, before (needs --before-src)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="rounds per configuration, interleaved (all servers stay up); medians are reported")
    ap.add_argument("--modes", default="without,with", help="CAM overlay modes: without, with, or both")
    ap.add_argument("--before-src", type=Path, default=None,
                    help="the `src` folder of another version (e.g. a `git worktree` of an older commit): the "
                         "`before` config serves the checkpoint with that code's defaults")
    args = ap.parse_args()
    configs = args.configs.split(",")
    modes = [m == "with" for m in args.modes.split(",")]
    if "before" in configs and args.before_src is None:
        raise SystemExit("the `before` config needs --before-src PATH/src")

    data = args.image.read_bytes() if args.image else synthetic_png(args.image_size)
    before, busy_before = load_line()
    runs: dict[tuple[str, bool], list[tuple[list[float], int, float, float, float]]] = {}
    alive = True
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint
        if ckpt is None:
            from export_latency import make_checkpoint

            ckpt = make_checkpoint(Path(tmp) / "model.safetensors", args.size)
        servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
        try:
            for config in configs:
                served, extra = served_model(config, ckpt, Path(tmp))
                port = free_port()
                env = None if config != "before" else {**os.environ, "PYTHONPATH": str(args.before_src)}
                proc = start_server(served, port, Path(tmp) / f"server-{config}.log", extra, env)
                servers[config] = (proc, f"http://127.0.0.1:{port}")
                wait_ready(servers[config][1], proc)
            for _ in range(args.rounds):
                for config, (proc, url) in servers.items():
                    for heatmap in modes:
                        asyncio.run(fire(url, data, 2, 2, heatmap))  # warm-up
                        cpu0 = server_cpu_seconds(proc.pid)
                        lat, errors, wall, batch = asyncio.run(
                            fire(url, data, args.requests, args.concurrency, heatmap))
                        core_ms = (server_cpu_seconds(proc.pid) - cpu0) / max(1, len(lat)) * 1e3
                        runs.setdefault((config, heatmap), []).append((lat, errors, wall, batch, core_ms))
            for _, url in servers.values():
                alive = alive and httpx.get(f"{url}/api/health", timeout=5).status_code == 200
        finally:
            for proc, _ in servers.values():
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
    after, busy_after = load_line()

    rows = []
    for (config, heatmap), rs in runs.items():
        lat = [t for r in rs for t in r[0]]
        ms = np.asarray(lat) * 1e3 if lat else np.asarray([np.nan])
        thr = [len(r[0]) / r[2] for r in rs]
        rows.append((config, "with" if heatmap else "without", sum(r[1] for r in rs),
                     *np.percentile(ms, [50, 95, 99]), float(np.median(thr)), min(thr), max(thr),
                     float(np.mean([r[3] for r in rs])), float(np.median([r[4] for r in rs]))))
    what = args.image.name if args.image else f"synthetic {args.image_size}x{args.image_size} 8-bit PNG"
    print(f"### `deeppneumonia serve` under load: {args.rounds} round(s) of {args.requests} requests, "
          f"{args.concurrency} concurrent\n")
    print("| server | CAM overlay | errors | p50 (ms) | p95 (ms) | p99 (ms) | throughput (req/s, median) | min-max "
          "| mean batch | server core-ms/req |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for config, heat, errors, p50, p95, p99, thr, lo, hi, batch, core in rows:
        print(f"| {config} | {heat} | {errors} | {p50:.0f} | {p95:.0f} | {p99:.0f} | {thr:.2f} | {lo:.1f}-{hi:.1f} "
              f"| {batch:.1f} | {core:.1f} |")
    print(f"\nUpload: {what} ({len(data) / 1024:.0f} KiB); model: {ckpt if args.checkpoint else 'random-weight resnet18'} "
          f"at {args.size} px on CPU; servers still healthy afterwards: {alive}. The client runs on the same cores; "
          f"rounds are interleaved across servers, so a change of load hits all of them.")
    print(f"Before: {before}. After: {after}.")
    thr = {(r[0], r[1]): r[6] for r in rows}
    errs = sum(r[2] for r in rows)
    for ref in ("before", "batch1"):
        base = {h: thr[(ref, h)] for h in ("without", "with") if (ref, h) in thr}
        gains = ", ".join(f"{c} {thr[(c, h)] / base[h]:.2f}x {h} overlays" for (c, h) in thr
                          if c != ref and h in base)
        if gains:
            print("\n" + headline(f"throughput against `{ref}` (medians over rounds): {gains}; {errs} errors in "
                                  f"{sum(len(r) for r in runs.values()) * args.requests} requests",
                                  busy_before, busy_after))
            break


if __name__ == "__main__":
    main()
