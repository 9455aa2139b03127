"""Helpers shared by the serving tests: a random-weight classifier checkpoint and encoded test images."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from deeppneumonia.config import load_config
from deeppneumonia.models.checkpoint import save_weights
from deeppneumonia.models.factory import build_classifier
from deeppneumonia.training.supervised import model_metadata


def random_checkpoint(path: Path, classes: tuple[str, ...] = ("normal", "pneumonia"), size: int = 64,
                      task: str = "multiclass", thresholds: list[float] | None = None, resize: str = "squash",
                      seed: int = 0) -> Path:
    """A ResNet18 classifier with random weights saved as training saves it (quick to make, real format)."""
    torch.manual_seed(seed)
    model = build_classifier(len(classes))
    meta = model_metadata(load_config("quick", [f"data.size={size}", f"data.resize={resize}"]), classes, task,
                          "resnet18")
    meta["thresholds"] = thresholds
    save_weights(path, model.state_dict(), meta)
    return path


def chest_like(width: int, height: int, seed: int = 0) -> np.ndarray:
    """uint8 (height, width) noisy grey picture with a bright blob (something for Grad-CAM to look at)."""
    rng = np.random.default_rng(seed)
    img = rng.normal(90, 12, (height, width))
    img[height // 4: height // 2, width // 5: width // 2] += 100
    return img.clip(0, 255).astype(np.uint8)


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@contextlib.contextmanager
def running_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread on a free 127.0.0.1 port; yields the base URL."""
    import socket
    import threading
    import time

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # bound here and handed over: no race for the port
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
