"""`deeppneumonia serve`: a small HTTP service and web page in front of one classifier (FastAPI + uvicorn).

Endpoints: ``GET /`` (a self-contained HTML page), ``POST /api/predict`` (one image, multipart field
``file`` or the raw bytes as the body), ``POST /api/predict/batch`` (several images in one multipart body, one
answer each), ``GET /api/health``, ``GET /api/info``, ``GET /openapi.json``.

Choices, and why:

* **FastAPI + a plain HTML page, not Gradio**: gradio pins Pillow and pulls in a large dependency tree; the
  page here is one file with inline CSS/JS and no external resource (no CDN, works offline).
* **No /docs or /redoc**: FastAPI's Swagger UI and ReDoc pages load their JavaScript from a CDN, so offline
  they are blank, and online every visit tells a third party the service is in use. The OpenAPI schema
  stays at ``/openapi.json`` (load it into any OpenAPI viewer).
* **Uploads stay in memory**: the body is read from the stream with a hard cap (the upload limit plus a
  small allowance for the multipart framing) and answered with 413 as soon as it goes past it; the
  multipart body is parsed in memory, never spooled to a temporary file, and the client's file name is
  never used as a path (only its ``.dcm`` ending is looked at, to accept preamble-less DICOM).
* **Dimension limits** come from the file header before decoding (``max_pixels``, ``max_side``): 413.
* **Every bad upload is a 4xx with JSON ``{"detail": "..."}``** saying what is wrong: 400 empty or no file,
  413 too large (bytes or pixels), 415 not an image / unsupported DICOM compression / wrong content type,
  422 truncated or corrupt image, DICOM without pixel data. The service keeps serving after each.
* **Concurrency and memory**: at most ``max_concurrency`` requests read their body and decode at once (an
  asyncio semaphore taken *before* the body is read, so buffered bodies are bounded by it, not by open
  connections); a body not received within ``body_timeout`` seconds is answered 408. Decoded requests
  release their slot and queue a small network input; one thread coalesces the queue into forward passes
  (:class:`~deeppneumonia.serve.analysis.Batcher`). The health, info and page endpoints never wait for the model.
* **Bound to 127.0.0.1 by default**; there is no authentication, so put a reverse proxy with TLS and
  authentication in front before binding to another interface.

FastAPI is imported by this module only: the core package works without the ``serve`` extra.
"""

import asyncio
import base64
import hashlib
import ipaddress
import logging
import re
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse

from deeppneumonia import __version__
from deeppneumonia.data.imageio import MAX_SIDE
from deeppneumonia.errors import ImageReadError, ImageTooLargeError, NotAnImageError, UnsupportedTransferSyntaxError
from deeppneumonia.inference.files import load_predictor
from deeppneumonia.serve.analysis import DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_MS, Analyzer, Prepared
from deeppneumonia.serve.middleware import SecurityHeaders

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_MB = 32.0
"""Default upload limit: an uncompressed 4k x 4k 16-bit radiograph is 32 MiB."""
DEFAULT_MAX_PIXELS = 40_000_000
"""Default pixel limit for uploads (decoded as float32: 160 MB at most per request)."""
DEFAULT_MAX_CONCURRENCY = 4
DEFAULT_BODY_TIMEOUT = 30.0
"""Seconds allowed to receive a whole request body (408 beyond)."""
MAX_BATCH_FILES = 64
"""Most files in one /api/predict/batch request."""
MULTIPART_ALLOWANCE = 64 * 1024
"""Bytes allowed above the upload limit for the multipart boundaries and part headers."""
_RAW_TYPES = ("application/octet-stream", "application/dicom", "image/png", "image/jpeg")


class UploadError(Exception):
    """A request that cannot be analysed, with its HTTP status and a message for the client."""

    def __init__(self, status: int, detail: str) -> None:
        """``status``: the HTTP status to answer with; ``detail``: the client's message."""
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _status_of(exc: ImageReadError) -> int:
    """HTTP status of an image read error: 413 too large, 415 not an image or unsupported syntax, else 422."""
    if isinstance(exc, ImageTooLargeError):
        return 413
    if isinstance(exc, NotAnImageError | UnsupportedTransferSyntaxError):
        return 415
    return 422


def _mib(n: int) -> str:
    """``n`` bytes as ``N bytes (X MiB)`` for messages."""
    return f"{n} bytes ({n / 2**20:.3g} MiB)"


async def read_body(request: Request, cap: int, limit: int | None = None, timeout: float | None = None) -> bytes:
    """The request body, read from the stream; UploadError(413) once it is longer than ``cap`` bytes,
    UploadError(408) when it has not all arrived within ``timeout`` seconds.

    ``limit`` is the upload limit named in the message (``cap`` minus the multipart allowance).
    """
    limit = cap if limit is None else limit
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise UploadError(413, f"upload too large: {int(declared)} bytes sent, the limit is {_mib(limit)}")
    buf = bytearray()
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                buf += chunk
                if len(buf) > cap:
                    raise UploadError(413, f"upload too large: more than the limit of {_mib(limit)} sent")
    except TimeoutError as exc:
        raise UploadError(408, f"request body not received within {timeout:g} s ({len(buf)} bytes arrived); "
                               "send the whole upload at once") from exc
    return bytes(buf)


def multipart_parts(body: bytes, content_type: str) -> list[tuple[str, bytes | None, bytes]]:
    """Every part of a multipart body as (field name, client file name or None, bytes), parsed in memory.

    Raises:
        UploadError: 400 malformed body.
    """
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadError(400, "multipart/form-data without a boundary parameter")
    parts: list[tuple[dict[bytes, bytes], bytearray]] = []
    header_field, header_value = bytearray(), bytearray()

    def on_part_begin() -> None:
        parts.append(({}, bytearray()))

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1][1].extend(data[start:end])

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        parts[-1][0][bytes(header_field).lower()] = bytes(header_value)
        header_field.clear()
        header_value.clear()

    callbacks: Any = {"on_part_begin": on_part_begin, "on_part_data": on_part_data,
                      "on_header_field": on_header_field, "on_header_value": on_header_value,
                      "on_header_end": on_header_end}
    try:
        parser = MultipartParser(boundary, callbacks)
        parser.write(body)
        parser.finalize()
    except Exception as exc:  # python-multipart raises its own error types for every malformation
        raise UploadError(400, f"malformed multipart/form-data body: {exc}") from exc
    out = []
    for headers, data in parts:
        _, disp = parse_options_header(headers.get(b"content-disposition", b""))
        out.append((disp.get(b"name", b"").decode("utf-8", "replace"), disp.get(b"filename"), bytes(data)))
    return out


def multipart_file(body: bytes, content_type: str, limit: int, field: str = "file") -> tuple[bytes, str]:
    """The bytes and client file name of the multipart part named ``field`` (or the first part with a file name).

    Parsed in memory with python-multipart's streaming parser; nothing touches the disk.

    Raises:
        UploadError: 400 malformed body or no file part, 413 the file part is longer than ``limit`` bytes.
    """
    chosen: tuple[bytes, str] | None = None
    for name, filename, data in multipart_parts(body, content_type):
        if name == field or (chosen is None and filename is not None):
            chosen = (data, (filename or b"").decode("utf-8", "replace"))
            if name == field:
                break
    if chosen is None:
        raise UploadError(400, f"no file in the upload: send multipart/form-data with the image in a field named "
                               f"{field!r} (e.g. curl -F {field}=@image.png)")
    if len(chosen[0]) > limit:
        raise UploadError(413, f"upload too large: the file has {len(chosen[0])} bytes, the limit is {_mib(limit)}")
    return chosen


def _upload_name(filename: str, media: str) -> str:
    """The name decoding sees: the client's file name is never a path; only its .dcm ending counts."""
    return "upload.dcm" if filename.lower().endswith(".dcm") or media == "application/dicom" else "upload"


def _error_of(exc: Exception) -> tuple[int, str]:
    """(HTTP status, message) of an upload, image-read or memory error; other exceptions are re-raised."""
    if isinstance(exc, UploadError):
        return exc.status, exc.detail
    if isinstance(exc, ImageReadError):
        return _status_of(exc), str(exc)
    if isinstance(exc, MemoryError):
        return 413, "image too large to decode in the memory available"
    raise exc


def _page() -> tuple[str, str]:
    """The HTML page and its Content-Security-Policy (inline script and style allowed by their hashes only)."""
    html = resources.files("deeppneumonia").joinpath("serve/web/index.html").read_text(encoding="utf-8")

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks)

    csp = (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; img-src 'self' data:; "
           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return html, csp


def create_app(checkpoint: str | Path, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB,
               max_pixels: int = DEFAULT_MAX_PIXELS, heatmap: bool = True, *, max_side: int = MAX_SIDE,
               device: str = "auto", max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
               layer: str = "layer4", method: str = "gradcam", max_batch: int = DEFAULT_MAX_BATCH,
               max_wait_ms: float = DEFAULT_MAX_WAIT_MS, body_timeout: float = DEFAULT_BODY_TIMEOUT,
               runtime: str = "torch", precision: str = "fp32") -> FastAPI:
    """The FastAPI application serving the classifier in ``checkpoint`` (loaded once, here).

    Args:
        checkpoint: a ``model.safetensors`` written by training, or an exported ``model.onnx`` (with its .json).
        max_upload_mb: largest accepted upload, in MiB (413 beyond).
        max_pixels: largest accepted ``width * height`` (413 beyond; checked before decoding).
        heatmap: offer CAM overlays and boxes (needs the ``explain`` extra).
        max_side: largest accepted width or height.
        device: ``auto``, ``cpu`` or ``cuda``.
        max_concurrency: requests whose body is read and decoded at the same time (more wait their turn,
            their bodies unread): bounds the memory.
        layer: the CAM layer; method: the CAM method (``inference.explain.METHODS``).
        max_batch: requests coalesced into one forward pass (1: none); max_wait_ms: how long a pass waits for more.
        body_timeout: seconds allowed to receive a request body (408 beyond).
        runtime: ``torch``, or ``onnxruntime`` to export a ``.safetensors`` checkpoint at start-up and run it with
            ONNX Runtime (an ``.onnx`` file always runs with ONNX Runtime).
        precision: ``fp32`` (default), ``bf16`` or ``auto`` for PyTorch (see ``Predictor.from_checkpoint``).
    """
    from deeppneumonia.inference.explain import check_method, fast_cam_applies

    check_method(method)
    limit = int(max_upload_mb * 1024 * 1024)
    if limit <= 0 or max_pixels <= 0 or max_concurrency <= 0 or max_batch <= 0 or body_timeout <= 0:
        raise ValueError("max_upload_mb, max_pixels, max_concurrency, max_batch and body_timeout must be positive")
    # ONNX Runtime's threads sleep between parallel sections: the request threads decode on the same cores
    predictor = load_predictor(checkpoint, device, runtime, precision, spinning=False)
    if heatmap:
        import importlib.util

        model = getattr(predictor, "model", None)
        needs = ["matplotlib"] + ([] if model is None or fast_cam_applies(model, layer, method) else ["pytorch_grad_cam"])
        missing = [m for m in needs if importlib.util.find_spec(m) is None]
        if missing:
            raise ImportError(f"heatmaps need {', '.join(missing)}: pip install 'deeppneumonia[explain]', "
                              "or serve without heatmaps")
        if not predictor.supports_heatmaps(layer, method):
            log.warning("%s cannot draw %s heatmaps at %s (an ONNX model needs `export --with-features`); "
                        "serving without heatmaps", checkpoint, method, layer)
            heatmap = False
    analyzer = Analyzer(predictor, max_pixels=max_pixels, max_side=max_side, heatmap=heatmap, layer=layer,
                        method=method, max_batch=max_batch, max_wait_ms=max_wait_ms)
    slot_by_loop: dict[int, asyncio.Semaphore] = {}

    def slots() -> asyncio.Semaphore:  # one per event loop (a test client may run several loops over one app)
        loop = id(asyncio.get_running_loop())
        if loop not in slot_by_loop:
            slot_by_loop[loop] = asyncio.Semaphore(max_concurrency)
        return slot_by_loop[loop]

    html, csp = _page()
    limits = {"max_upload_bytes": limit, "max_upload_mb": max_upload_mb, "max_pixels": max_pixels,
              "max_side": max_side, "max_concurrency": max_concurrency, "body_timeout_s": body_timeout,
              "max_batch_files": MAX_BATCH_FILES}

    app = FastAPI(title="deeppneumonia", version=__version__, docs_url=None, redoc_url=None,
                  description="Chest X-ray classification with Grad-CAM overlays. Upload one PNG, JPEG or DICOM "
                              "image to /api/predict. The Swagger UI is disabled (it loads from a CDN); "
                              "this schema is the reference.")
    app.state.analyzer = analyzer

    app.add_middleware(SecurityHeaders)

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, exc: UploadError) -> JSONResponse:
        """Answer an UploadError with its status; 408 and 413 close the connection (the body is left unread)."""
        log.info("rejected upload: %s %s", exc.status, exc.detail)
        headers = {"Connection": "close"} if exc.status in (408, 413) else None  # the rest of the body is not read
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)

    @app.exception_handler(ImageReadError)
    async def image_error(request: Request, exc: ImageReadError) -> JSONResponse:
        log.info("rejected image: %s", exc)
        return JSONResponse({"detail": str(exc)}, status_code=_status_of(exc))

    @app.exception_handler(MemoryError)
    async def memory_error(request: Request, exc: MemoryError) -> JSONResponse:
        log.warning("out of memory while decoding an upload")
        return JSONResponse({"detail": "image too large to decode in the memory available"}, status_code=413)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"detail": f"internal error ({type(exc).__name__}); see the server log"}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        msgs = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors())
        return JSONResponse({"detail": f"invalid request: {msgs}"}, status_code=422)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(html, headers={"Content-Security-Policy": csp})

    @app.get("/api/health", summary="liveness: the model is loaded")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/api/info", summary="the model: classes, task, input size, architecture; the upload limits")
    async def info() -> dict[str, Any]:
        return {**analyzer.info(), "limits": limits, "version": __version__}

    async def answer(prep: Prepared) -> dict[str, Any]:
        """Run a prepared upload through the batcher, then finish its answer in the threadpool."""
        out = await asyncio.wrap_future(analyzer.submit(prep))
        return await run_in_threadpool(analyzer.finish, prep, out)

    upload_schema = {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary", "description": "PNG, JPEG or DICOM"}}}},
        **{t: {"schema": {"type": "string", "format": "binary"}} for t in _RAW_TYPES}}}}

    @app.post("/api/predict", openapi_extra=upload_schema,
              summary="classify one image; probabilities, labels, Grad-CAM overlay (PNG, base64) and boxes",
              responses={400: {"description": "empty upload or no file part"},
                         413: {"description": "upload or image dimensions above the limits"},
                         415: {"description": "not a PNG/JPEG/DICOM, unsupported DICOM compression, "
                                              "or unsupported content type"},
                         422: {"description": "truncated or corrupt image, DICOM without pixel data"}})
    async def predict(request: Request, heatmap: bool = True) -> dict[str, Any]:
        """``heatmap=false`` skips the CAM overlay (a little faster): no overlay and no boxes."""
        content_type = request.headers.get("content-type", "")
        media = content_type.split(";")[0].strip().lower()
        if media not in _RAW_TYPES and media != "multipart/form-data":
            raise UploadError(415, f"unsupported content type {media or '(none)'!r}: send multipart/form-data with "
                                   f"a 'file' field, or the raw image bytes as {', '.join(_RAW_TYPES)}")
        async with slots():  # bodies are read and decoded under the slot: memory bounded by max_concurrency
            if media == "multipart/form-data":
                body = await read_body(request, limit + MULTIPART_ALLOWANCE, limit, body_timeout)
            else:
                body = await read_body(request, limit, timeout=body_timeout)

            def work(body: bytes) -> Prepared:  # in the threadpool: parsing and decoding never block the loop
                """Parse the upload (multipart or raw), refuse an empty file and decode it (runs in the threadpool)."""
                data, filename = (multipart_file(body, content_type, limit) if media == "multipart/form-data"
                                  else (body, ""))
                if not data:
                    raise UploadError(400, "empty upload: the file has 0 bytes")
                return analyzer.prepare(data, _upload_name(filename, media), heatmap)

            prep = await run_in_threadpool(work, body)
            body = b""  # freed before waiting for the model
        return await answer(prep)

    @app.post("/api/predict/batch", summary="classify several images (multipart, one part per file); one answer "
                                             "per file, in order, each its result or its error",
              openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                  "type": "object", "properties": {"files": {"type": "array", "items": {
                      "type": "string", "format": "binary"}}}}}}}},
              responses={400: {"description": "no file part, too many files, malformed body"},
                         413: {"description": "the whole body above the upload limit"},
                         415: {"description": "not multipart/form-data"}})
    async def predict_batch(request: Request, heatmap: bool = False) -> dict[str, Any]:
        """Every part with a file name is one image; the whole body is bounded by the upload limit. Heatmaps
        are off unless ``heatmap=true``."""
        content_type = request.headers.get("content-type", "")
        if content_type.split(";")[0].strip().lower() != "multipart/form-data":
            raise UploadError(415, "send the images as multipart/form-data, one part per file "
                                   "(e.g. curl -F files=@a.png -F files=@b.dcm)")
        async with slots():
            body = await read_body(request, limit + MULTIPART_ALLOWANCE, limit, body_timeout)

            def work(body: bytes) -> list[Prepared | tuple[int, str]]:
                """Decode every file part of the body: a Prepared per file, or (status, message) for one that fails.

                Raises UploadError(400) when there is no file part or more than ``MAX_BATCH_FILES``.
                """
                files = [(f, d) for _, f, d in multipart_parts(body, content_type) if f is not None]
                if not files:
                    raise UploadError(400, "no file in the upload: send one multipart part with a file name per image")
                if len(files) > MAX_BATCH_FILES:
                    raise UploadError(400, f"too many files: {len(files)}, the limit is {MAX_BATCH_FILES} per request")
                out: list[Prepared | tuple[int, str]] = []
                for filename, data in files:
                    try:
                        if not data:
                            raise UploadError(400, "empty upload: the file has 0 bytes")
                        out.append(analyzer.prepare(data, _upload_name(filename.decode("utf-8", "replace"), ""),
                                                    heatmap))
                    except (UploadError, ImageReadError, MemoryError) as exc:
                        out.append(_error_of(exc))
                return out

            prepared = await run_in_threadpool(work, body)
            body = b""
        answers = await asyncio.gather(*(answer(p) for p in prepared if isinstance(p, Prepared)))
        results: list[dict[str, Any]] = []
        k = 0
        for i, p in enumerate(prepared):
            if isinstance(p, Prepared):
                r = answers[k]
                k += 1
                r.pop("model", None)
                results.append({"index": i, "status": 200, **r})
            else:
                results.append({"index": i, "status": p[0], "error": p[1]})
        return {"model": analyzer.predictor.model_info, "count": len(results),
                "errors": sum(1 for r in results if r["status"] != 200), "results": results}

    return app


def _is_loopback(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback IP address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(checkpoint: str | Path, host: str = "127.0.0.1", port: int = 8000,
        max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, max_pixels: int = DEFAULT_MAX_PIXELS, heatmap: bool = True,
        device: str = "auto", max_concurrency: int = DEFAULT_MAX_CONCURRENCY, log_level: str = "info",
        layer: str = "layer4", method: str = "gradcam", max_batch: int = DEFAULT_MAX_BATCH,
        max_wait_ms: float = DEFAULT_MAX_WAIT_MS, body_timeout: float = DEFAULT_BODY_TIMEOUT,
        runtime: str = "torch", precision: str = "fp32") -> None:
    """Load the model and serve it with uvicorn until interrupted."""
    import uvicorn

    app = create_app(checkpoint, max_upload_mb, max_pixels, heatmap, device=device, max_concurrency=max_concurrency,
                     layer=layer, method=method, max_batch=max_batch, max_wait_ms=max_wait_ms,
                     body_timeout=body_timeout, runtime=runtime, precision=precision)
    if not _is_loopback(host):
        log.warning("serving on %s: reachable from other machines, with no authentication and no TLS; "
                    "put a reverse proxy in front", host)
    log.info("serving %s on http://%s:%d/", checkpoint, host, port)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
