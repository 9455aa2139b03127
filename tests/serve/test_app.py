"""The HTTP service: good uploads answer sane JSON, every bad upload a specific 4xx that says why."""

from __future__ import annotations

import base64
import io
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.data.readers.test_dicom import _dicom_dataset, _ramp12
from tests.data.test_imageio import _raw_png
from tests.serve.helpers import chest_like, jpeg_bytes, png_bytes, random_checkpoint

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("pytorch_grad_cam")
from fastapi.testclient import TestClient

from deeppneumonia.serve.app import create_app
from deeppneumonia.serve.middleware import SecurityHeaders

UPLOAD_MB = 1.0
LIMIT = int(UPLOAD_MB * 1024 * 1024)
MAX_PIXELS = 400 * 400
CLASSES = ("normal", "pneumonia", "other")
MPEG2 = "1.2.840.10008.1.2.4.100"  # a DICOM transfer syntax pydicom has no pixel decoder for


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return random_checkpoint(tmp_path_factory.mktemp("serve") / "model.safetensors", CLASSES)


@pytest.fixture(scope="module")
def client(checkpoint: Path) -> Iterator[TestClient]:
    app = create_app(checkpoint, max_upload_mb=UPLOAD_MB, max_pixels=MAX_PIXELS, device="cpu")
    with TestClient(app) as c:
        yield c


def dicom_bytes(ds: Any) -> bytes:
    buf = io.BytesIO()
    try:
        ds.save_as(buf, enforce_file_format=True)
    except TypeError:  # pydicom < 3
        ds.save_as(buf, write_like_original=False)
    return buf.getvalue()


def post(client: TestClient, data: bytes, filename: str = "scan.png", **params: Any) -> Any:
    return client.post("/api/predict", files={"file": (filename, data, "application/octet-stream")}, params=params)


def decode_overlay(body: dict[str, Any]) -> Image.Image:
    raw = base64.b64decode(body["heatmap"]["png_base64"])
    assert raw.startswith(b"\x89PNG\r\n\x1a\n")
    return Image.open(io.BytesIO(raw))


def check_good(body: dict[str, Any], width: int, height: int, fmt: str) -> None:
    probs = np.asarray(body["probabilities"])
    assert body["classes"] == list(CLASSES) and probs.shape == (len(CLASSES),)
    assert np.all((probs >= 0) & (probs <= 1)) and probs.sum() == pytest.approx(1.0, abs=1e-5)  # softmax
    assert body["labels"] == [CLASSES[int(probs.argmax())]]
    assert body["image"]["width"] == width and body["image"]["height"] == height and body["image"]["format"] == fmt
    heat = body["heatmap"]
    assert heat["class"] == body["labels"][0]
    pic = decode_overlay(body)
    assert pic.format == "PNG" and pic.size == (heat["width"], heat["height"])
    assert max(pic.size) == 512 and pic.size[0] / pic.size[1] == pytest.approx(width / height, rel=0.02)
    for b in body["boxes"]:
        assert b["x"] >= 0 and b["y"] >= 0 and b["w"] > 0 and b["h"] > 0
        assert b["x"] + b["w"] <= width + 0.1 and b["y"] + b["h"] <= height + 0.1


def test_good_png(client: TestClient) -> None:
    r = post(client, png_bytes(chest_like(160, 120)))
    assert r.status_code == 200, r.text
    check_good(r.json(), 160, 120, "PNG")
    assert r.headers["cache-control"] == "no-store" and r.headers["x-content-type-options"] == "nosniff"


def test_security_headers_added_unless_the_response_sets_them() -> None:
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    app = FastAPI()
    app.add_middleware(SecurityHeaders)

    @app.get("/own")
    async def own() -> PlainTextResponse:
        return PlainTextResponse("x", headers={"Cache-Control": "max-age=60"})

    @app.get("/plain")
    async def plain() -> PlainTextResponse:
        return PlainTextResponse("y")

    with TestClient(app) as c:  # the lifespan scope passes through the middleware untouched
        own_r, plain_r = c.get("/own"), c.get("/plain")
    assert own_r.headers["cache-control"] == "max-age=60" and own_r.headers["referrer-policy"] == "no-referrer"
    assert plain_r.headers["cache-control"] == "no-store" and plain_r.headers["x-content-type-options"] == "nosniff"
    assert plain_r.text == "y"


def test_good_dicom_and_jpeg(client: TestClient) -> None:
    r = post(client, dicom_bytes(_dicom_dataset(_ramp12(90, 70))), "x.dcm")
    assert r.status_code == 200, r.text
    check_good(r.json(), 70, 90, "DICOM")
    assert r.json()["image"]["bit_depth"] == 12
    r = post(client, jpeg_bytes(chest_like(100, 100)), "photo.png")  # the name lies; the content decides
    assert r.status_code == 200, r.text
    check_good(r.json(), 100, 100, "JPEG")


def test_same_image_same_answer_as_the_predictor(client: TestClient, checkpoint: Path) -> None:
    from deeppneumonia.inference.predictor import Predictor

    arr = chest_like(96, 80, seed=3)
    pred = Predictor.from_checkpoint(checkpoint, "cpu")
    expected = pred.probabilities(pred.preprocess(arr.astype(np.float32) / 255))[0]
    got = post(client, png_bytes(arr), heatmap="false").json()
    assert np.allclose(got["probabilities"], expected, atol=1e-5)
    assert got["heatmap"] is None and got["boxes"] is None and got["timing_ms"]["gradcam"] is None


def test_raw_body_upload(client: TestClient) -> None:
    r = client.post("/api/predict", content=png_bytes(chest_like(64, 64)), headers={"content-type": "image/png"})
    assert r.status_code == 200 and r.json()["image"]["format"] == "PNG"


def _truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


BAD_UPLOADS: list[tuple[str, Any, int, str]] = [
    ("empty", lambda: b"", 400, r"empty upload"),
    ("text", lambda: b"name,label\nfoo,bar\n" * 20, 415, r"not an image.*detected from the content"),
    ("truncated png", lambda: _truncated(png_bytes(chest_like(200, 200))), 422, r"truncated PNG"),
    ("truncated jpeg", lambda: _truncated(jpeg_bytes(chest_like(200, 200))), 422, r"truncated.*JPEG"),
    ("png header 100000x100000", lambda: _raw_png(100_000, 100_000, b""), 413, r"100000x100000.*limit"),
    ("above the server's max_pixels", lambda: png_bytes(np.zeros((401, 400), np.uint8)), 413,
     rf"400x401 = 160400 pixels, above the limit of {MAX_PIXELS}"),
    ("dicom without pixel data", lambda: _no_pixel_dicom(), 422, r"no pixel data"),
    ("dicom unsupported transfer syntax", lambda: dicom_bytes(_dicom_dataset(_ramp12(), transfer_syntax=MPEG2)), 415,
     rf"transfer syntax {re.escape(MPEG2)}.*cannot be decoded"),
    ("dicom corrupt pixel data", lambda: _short_pixel_dicom(), 422, r"DICOM"),
]
def _no_pixel_dicom() -> bytes:
    ds = _dicom_dataset(_ramp12())
    del ds.PixelData
    return dicom_bytes(ds)


def _short_pixel_dicom() -> bytes:
    ds = _dicom_dataset(_ramp12())
    ds.PixelData = ds.PixelData[:10]
    return dicom_bytes(ds)


@pytest.mark.parametrize(("what", "make", "status", "message"), BAD_UPLOADS, ids=[b[0] for b in BAD_UPLOADS])
def test_bad_upload(client: TestClient, what: str, make: Any, status: int, message: str) -> None:
    r = post(client, make(), "../../etc/evil.png")
    assert r.status_code == status, (what, r.text)
    detail = r.json()["detail"]
    assert isinstance(detail, str) and re.search(message, detail, flags=re.S), detail
    assert "evil" not in detail and "/etc" not in detail  # the client's file name is never echoed or used


def test_server_keeps_serving_after_every_bad_upload(client: TestClient) -> None:
    statuses = [post(client, make()).status_code for _, make, _, _ in BAD_UPLOADS]
    assert all(400 <= s < 500 for s in statuses)
    assert client.get("/api/health").json() == {"status": "ok"}
    r = post(client, png_bytes(chest_like(120, 160)))
    assert r.status_code == 200
    check_good(r.json(), 120, 160, "PNG")


def test_oversize_upload_413(client: TestClient) -> None:
    data = png_bytes(chest_like(64, 64))
    big = data + b"\0" * (LIMIT + 1 - len(data))  # one byte over the limit
    r = post(client, big)
    assert r.status_code == 413 and "too large" in r.json()["detail"]
    ok = data + b"\0" * (LIMIT - len(data))  # exactly at the limit: trailing bytes after IEND are allowed
    assert post(client, ok, heatmap="false").status_code == 200


def test_oversize_without_content_length_is_cut_off(client: TestClient) -> None:
    """A chunked body (no Content-Length) is read only until it passes the cap, then refused."""
    import asyncio

    from deeppneumonia.serve.app import UploadError, read_body

    chunk, pulled = 65536, []

    class Streamed:
        headers: dict[str, str] = {}  # noqa: RUF012

        async def stream(self) -> Any:
            for _ in range(64):  # 4 MiB offered
                pulled.append(chunk)
                yield b"\0" * chunk

    with pytest.raises(UploadError) as exc_info:
        asyncio.run(read_body(Streamed(), LIMIT))  # type: ignore[arg-type]
    assert exc_info.value.status == 413 and sum(pulled) <= LIMIT + chunk  # stopped one chunk past the cap
    r = client.post("/api/predict", content=iter([b"\0" * chunk] * 20), headers={"content-type": "image/png"})
    assert r.status_code == 413 and "more than" in r.json()["detail"]


def test_request_errors_are_json_with_a_reason(client: TestClient) -> None:
    good = png_bytes(chest_like(64, 64))
    r = client.post("/api/predict", files={"image": ("a.png", good, "image/png")}, params={"heatmap": "false"})
    assert r.status_code == 200  # a file part under another field name is taken
    text_only = b'--x\r\nContent-Disposition: form-data; name="note"\r\n\r\nhello\r\n--x--\r\n'
    r = client.post("/api/predict", content=text_only, headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 400 and "no file" in r.json()["detail"]
    r = client.post("/api/predict", content=b"abc", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "multipart/form-data" in r.json()["detail"]
    r = client.post("/api/predict", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data"})
    assert r.status_code == 400 and "boundary" in r.json()["detail"]
    r = post(client, good, heatmap="maybe")
    assert r.status_code == 422 and "heatmap" in r.json()["detail"]


def test_uploads_stay_in_memory(checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An upload above Starlette's 1 MiB spool size is parsed without any temporary file."""
    import starlette.datastructures
    import starlette.formparsers

    def no_temp(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a temporary file was created")

    for module in (tempfile, starlette.formparsers, starlette.datastructures):
        for name in ("SpooledTemporaryFile", "NamedTemporaryFile", "TemporaryFile", "mkstemp"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, no_temp)
    monkeypatch.chdir(tmp_path)
    noise = png_bytes(np.random.default_rng(0).integers(0, 255, (1100, 1100), np.uint8))
    assert len(noise) > 1024 * 1024
    with TestClient(create_app(checkpoint, max_upload_mb=4, heatmap=False, device="cpu")) as c:
        r = post(c, noise, "../../x.png")
    assert r.status_code == 200 and r.json()["image"]["width"] == 1100
    assert not any(tmp_path.iterdir())


def test_info_health_openapi_page(client: TestClient) -> None:
    info = client.get("/api/info").json()
    assert info["classes"] == list(CLASSES) and info["size"] == 64 and info["arch"] == "resnet18"
    assert info["task"] == "multiclass" and info["limits"]["max_upload_bytes"] == LIMIT
    schema = client.get("/openapi.json").json()
    assert "multipart/form-data" in schema["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 404  # Swagger UI would load from a CDN: disabled
    page = client.get("/")
    html = page.text
    assert page.status_code == 200 and '<input type="file"' in html and 'id="probs"' in html and 'id="heatmap"' in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "the page must not load external resources"
    assert "cdn" not in html.lower()
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "'sha256-" in csp and "unsafe-inline" not in csp


def test_multilabel_thresholds(tmp_path: Path) -> None:
    thresholds = [0.3, 0.5, 0.7]
    ckpt = random_checkpoint(tmp_path / "ml.safetensors", CLASSES, task="multilabel", thresholds=thresholds, seed=1)
    with TestClient(create_app(ckpt, heatmap=False, device="cpu")) as c:
        body = post(c, png_bytes(chest_like(80, 80))).json()
        assert c.get("/api/info").json()["heatmap"] is False
    assert body["thresholds"] == pytest.approx(thresholds) and body["heatmap"] is None
    expected = [k for k, p, t in zip(CLASSES, body["probabilities"], thresholds, strict=True) if p >= t]
    assert body["labels"] == expected


def test_letterbox_boxes_in_original_pixels(tmp_path: Path) -> None:
    ckpt = random_checkpoint(tmp_path / "lb.safetensors", CLASSES, resize="letterbox", seed=2)
    with TestClient(create_app(ckpt, device="cpu")) as c:
        body = post(c, png_bytes(chest_like(200, 80))).json()
    assert body["image"]["width"] == 200 and body["heatmap"]["width"] == 512 and body["heatmap"]["height"] == 205
    for b in body["boxes"]:  # never in the letterbox bands
        assert b["y"] >= 0 and b["y"] + b["h"] <= 80 + 0.1


def test_cli_serve_is_thin(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import deeppneumonia.serve.app
    from deeppneumonia.cli import main

    calls: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(deeppneumonia.serve.app, "run", lambda ckpt, **kw: calls.append((ckpt, kw)))
    assert main(["serve", "--checkpoint", str(checkpoint), "--port", "8123", "--max-upload-mb", "5"]) == 0
    ckpt, kw = calls[0]
    assert ckpt == checkpoint and kw["host"] == "127.0.0.1" and kw["port"] == 8123 and kw["max_upload_mb"] == 5
    assert "max_pixels" not in kw and kw["heatmap"] is True  # unset limits keep serve's defaults
    assert kw["precision"] == "fp32"
    assert main(["serve", "--checkpoint", str(checkpoint), "--precision", "bf16"]) == 0
    assert calls[1][1]["precision"] == "bf16"


def test_bf16_service_answers_close_to_fp32(client: TestClient, checkpoint: Path) -> None:
    arr = png_bytes(chest_like(96, 80, seed=5))
    with TestClient(create_app(checkpoint, device="cpu", precision="bf16")) as fast:
        got = post(fast, arr, heatmap="true").json()
    want = post(client, arr, heatmap="true").json()
    assert np.abs(np.subtract(got["probabilities"], want["probabilities"])).max() < 0.05
    assert got["heatmap"] is not None


def test_unexpected_error_is_json_500_and_the_server_goes_on(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(checkpoint, heatmap=False, device="cpu")
    real = app.state.analyzer.prepare
    monkeypatch.setattr(app.state.analyzer, "prepare", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with TestClient(app, raise_server_exceptions=False) as c:
        r = post(c, png_bytes(chest_like(64, 64)))
        assert r.status_code == 500 and "RuntimeError" in r.json()["detail"] and "boom" not in r.json()["detail"]
        monkeypatch.setattr(app.state.analyzer, "prepare", real)
        assert post(c, png_bytes(chest_like(64, 64))).status_code == 200
