"""The service for integrators and at speed: coalesced batches equal batch-1 answers, DICOM UIDs, model identity,
the batch endpoint, thresholds on multi-class outputs, body timeout and bounded body buffering, option checks."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.serve.helpers import chest_like, png_bytes, random_checkpoint

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient

from deeppneumonia.inference.predictor import Predictor
from deeppneumonia.serve.app import create_app

CLASSES = ("normal", "pneumonia", "other")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("integ") / "model.safetensors", CLASSES)


def post(c: TestClient, data: bytes, name: str = "x.png", **params: Any) -> Any:
    return c.post("/api/predict", files={"file": (name, data, "application/octet-stream")}, params=params)


def test_coalesced_answers_equal_batch_one_answers(checkpoint: Path) -> None:
    images = [png_bytes(chest_like(96 + 8 * i, 80, seed=i)) for i in range(12)]
    solo = create_app(checkpoint, device="cpu", max_batch=1)
    with TestClient(solo) as c:
        ref = [post(c, im).json() for im in images]
    assert all(r["batch_size"] == 1 for r in ref)
    app = create_app(checkpoint, device="cpu", max_batch=8, max_wait_ms=200)
    out: list[Any] = [None] * len(images)
    with TestClient(app) as c:
        def go(i: int) -> None:
            out[i] = post(c, images[i]).json()

        threads = [threading.Thread(target=go, args=(i,)) for i in range(len(images))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert max(r["batch_size"] for r in out) > 1  # requests were coalesced
    for a, b in zip(out, ref, strict=True):
        assert np.allclose(a["probabilities"], b["probabilities"], atol=1e-5)
        assert a["labels"] == b["labels"] and a["boxes"] == b["boxes"] and a["heatmap"]["class"] == b["heatmap"]["class"]


def test_model_identity_in_info_and_every_answer(checkpoint: Path) -> None:
    sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    with TestClient(create_app(checkpoint, device="cpu", heatmap=False)) as c:
        info = c.get("/api/info").json()
        body = post(c, png_bytes(chest_like(64, 64))).json()
    assert info["model"]["sha256"] == sha and info["model"]["version"] and "decision" in info
    assert body["model"] == info["model"] and body["dicom"] is None


def test_dicom_uids_are_echoed(checkpoint: Path) -> None:
    from tests.data.readers.test_dicom import _dicom_dataset, _ramp12
    from tests.serve.test_app import dicom_bytes

    ds = _dicom_dataset(_ramp12(40, 48))
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = "1.2.3", "1.2.3.4", "1.2.3.4.5"
    with TestClient(create_app(checkpoint, device="cpu", heatmap=False)) as c:
        body = post(c, dicom_bytes(ds), "scan.dcm").json()
    assert body["dicom"] == {"StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.3.4", "SOPInstanceUID": "1.2.3.4.5"}


def test_batch_endpoint_one_result_per_file(checkpoint: Path) -> None:
    good = [png_bytes(chest_like(70, 60, seed=s)) for s in (1, 2)]
    with TestClient(create_app(checkpoint, device="cpu")) as c:
        r = c.post("/api/predict/batch", files=[("files", ("a.png", good[0])), ("files", ("b.txt", b"not an image")),
                                                ("files", ("c.png", good[1])), ("files", ("d.png", b""))])
        singles = [post(c, g, heatmap="false").json() for g in good]
        assert c.post("/api/predict/batch", content=b"x", headers={"content-type": "text/plain"}).status_code == 415
    body = r.json()
    assert r.status_code == 200 and body["count"] == 4 and body["errors"] == 2 and body["model"]["sha256"]
    res = body["results"]
    assert [x["status"] for x in res] == [200, 415, 200, 400] and [x["index"] for x in res] == [0, 1, 2, 3]
    assert "not an image" in res[1]["error"] and res[0]["heatmap"] is None
    assert np.allclose(res[0]["probabilities"], singles[0]["probabilities"], atol=1e-5)
    assert np.allclose(res[2]["probabilities"], singles[1]["probabilities"], atol=1e-5)


def test_thresholds_apply_to_multiclass(tmp_path: Path) -> None:
    ckpt = random_checkpoint(tmp_path / "t.safetensors", CLASSES, thresholds=[0.9, 0.05, 0.9], seed=3)
    with TestClient(create_app(ckpt, device="cpu", heatmap=False)) as c:
        body = post(c, png_bytes(chest_like(64, 64))).json()
    p = np.asarray(body["probabilities"])
    assert body["labels"] == [CLASSES[int((p / np.asarray([0.9, 0.05, 0.9])).argmax())]]
    assert body["above_threshold"] == [k for k, v, t in zip(CLASSES, p, [0.9, 0.05, 0.9], strict=True) if v >= t]
    pred = Predictor.from_checkpoint(ckpt, "cpu")  # binary reading: p / t argmax == "p1 >= t1" when t0 = 1 - t1
    pred.meta.update(classes=["a", "b"], thresholds=[0.7, 0.3])
    assert pred.labels(np.array([[0.69, 0.31], [0.71, 0.29]])) == [["b"], ["a"]]


def test_nan_weights_are_refused(tmp_path: Path) -> None:
    import torch

    from deeppneumonia.errors import CheckpointError
    from deeppneumonia.models.checkpoint import load_weights, save_weights

    ckpt = random_checkpoint(tmp_path / "n.safetensors", CLASSES)
    state, meta = load_weights(ckpt)
    state["fc.weight"] = torch.full_like(state["fc.weight"], float("nan"))
    meta.pop("versions")
    save_weights(ckpt, state, meta)
    with pytest.raises(CheckpointError, match="NaN"):
        create_app(ckpt, device="cpu")


def test_slow_body_times_out_and_bodies_wait_for_a_slot(checkpoint: Path) -> None:
    import httpx

    app = create_app(checkpoint, device="cpu", heatmap=False, body_timeout=0.3, max_concurrency=1)
    data = png_bytes(chest_like(64, 64))

    async def slow_body() -> Any:
        yield data[:100]
        await asyncio.sleep(1.0)
        yield data[100:]

    import time

    start = time.monotonic()
    second_read: list[float] = []

    async def second_body() -> Any:
        second_read.append(time.monotonic() - start)
        yield data

    async def scenario() -> tuple[int, str, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            async def first() -> Any:
                return await c.post("/api/predict", content=slow_body(), headers={"content-type": "image/png"})

            async def second() -> Any:
                await asyncio.sleep(0.05)
                return await c.post("/api/predict", content=second_body(), headers={"content-type": "image/png"})

            slow, fast = await asyncio.gather(first(), second())
        return slow.status_code, slow.json()["detail"], fast.status_code

    status, detail, after = asyncio.run(scenario())
    assert status == 408 and "not received within" in detail and after == 200
    # one slot: the second body is not read (buffered) while the first request holds the slot
    assert second_read and second_read[0] >= 0.3, second_read  # read only once the slow body's 0.3 s were up


@pytest.mark.parametrize("argv, msg", [(["--port", "99999"], "--port 99999"), (["--max-upload-mb", "0"], "must be"),
                                        (["--max-concurrency", "0"], "must be"), (["--max-batch", "-1"], "must be")])
def test_serve_options_are_checked(checkpoint: Path, argv: list[str], msg: str, capsys: pytest.CaptureFixture[str]) -> None:
    from deeppneumonia.cli import main

    assert main(["serve", "--checkpoint", str(checkpoint), *argv]) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_extreme_aspect_ratio_is_never_a_500(tmp_path: Path) -> None:
    ckpt = random_checkpoint(tmp_path / "lb.safetensors", CLASSES, size=32, resize="letterbox")
    with TestClient(create_app(ckpt, device="cpu")) as c:
        r = post(c, png_bytes(np.full((300, 1), 128, np.uint8)))
        batch = c.post("/api/predict/batch", files=[("files", ("a.png", png_bytes(np.full((300, 1), 9, np.uint8)))),
                                                    ("files", ("b.png", png_bytes(chest_like(40, 40))))]).json()
    assert r.status_code in (200, 422), r.text  # 422 until the letterbox resize handles it, then 200
    assert [x["status"] for x in batch["results"]][1] == 200 and batch["results"][0]["status"] in (200, 422)


def test_other_cam_methods_and_the_onnx_runtime(checkpoint: Path) -> None:
    pytest.importorskip("pytorch_grad_cam")
    pytest.importorskip("onnxruntime")
    img = png_bytes(chest_like(72, 64))
    with TestClient(create_app(checkpoint, device="cpu", method="gradcam++", layer="layer3")) as c:
        body = post(c, img).json()
        assert c.get("/api/info").json()["cam_method"] == "gradcam++"
    assert body["heatmap"]["method"] == "gradcam++" and body["heatmap"]["layer"] == "layer3"
    app = create_app(checkpoint, runtime="onnxruntime")
    with TestClient(app) as c:  # exported at start-up, run by ORT
        onnx_body = post(c, img).json()
    # ORT's threads sleep between parallel sections instead of spinning: the request threads share the cores
    opts = app.state.analyzer.predictor.session.get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert onnx_body["model"]["format"] == "safetensors (onnxruntime)"
    assert onnx_body["heatmap"]["class"] == onnx_body["labels"][0]
    assert onnx_body["model"]["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    with TestClient(create_app(checkpoint, device="cpu")) as c:
        ref = post(c, img).json()
    assert np.allclose(onnx_body["probabilities"], ref["probabilities"], atol=1e-4) and onnx_body["boxes"] == ref["boxes"]
