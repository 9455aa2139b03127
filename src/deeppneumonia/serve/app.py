"""`deeppneumonia serve`: a small HTTP service and web page in front of one classifier (FastAPI + uvicorn).

Endpoints: ``GET /`` (a self-contained HTML page), ``POST /api/predict`` (one image, multipart field
``file`` or the raw bytes as the body), ``GET /api/health``, ``GET /api/info``, ``GET /openapi.json``.

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
* **Concurrency**: decoding and inference run in the threadpool, at most ``max_concurrency`` requests at
  once (more wait their turn); the model itself is used under a lock (see
  :class:`~deeppneumonia.serve.analysis.Analyzer`). The health, info and page endpoints never wait for the model.
* **Bound to 127.0.0.1 by default**; there is no authentication, so put a reverse proxy with TLS and
  authentication in front before binding to another interface.

FastAPI is imported by this module only: the core package works without the ``serve`` extra.
"""

import base64
import hashlib
import ipaddress
import logging
import re
import threading
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response

from deeppneumonia import __version__
from deeppneumonia.data.imageio import MAX_SIDE
from deeppneumonia.errors import ImageReadError, ImageTooLargeError, NotAnImageError, UnsupportedTransferSyntaxError
from deeppneumonia.inference.predictor import Predictor
from deeppneumonia.serve.analysis import Analyzer

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_MB = 32.0
"""Default upload limit: an uncompressed 4k x 4k 16-bit radiograph is 32 MiB."""
DEFAULT_MAX_PIXELS = 40_000_000
"""Default pixel limit for uploads (decoded as float32: 160 MB at most per request)."""
DEFAULT_MAX_CONCURRENCY = 4
MULTIPART_ALLOWANCE = 64 * 1024
"""Bytes allowed above the upload limit for the multipart boundaries and part headers."""
_RAW_TYPES = ("application/octet-stream", "application/dicom", "image/png", "image/jpeg")


class UploadError(Exception):
    """A request that cannot be analysed, with its HTTP status and a message for the client."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def _status_of(exc: ImageReadError) -> int:
    if isinstance(exc, ImageTooLargeError):
        return 413
    if isinstance(exc, NotAnImageError | UnsupportedTransferSyntaxError):
        return 415
    return 422


def _mib(n: int) -> str:
    return f"{n} bytes ({n / 2**20:.3g} MiB)"


async def read_body(request: Request, cap: int, limit: int | None = None) -> bytes:
    """The request body, read from the stream; UploadError(413) once it is longer than ``cap`` bytes.

    ``limit`` is the upload limit named in the message (``cap`` minus the multipart allowance).
    """
    limit = cap if limit is None else limit
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise UploadError(413, f"upload too large: {int(declared)} bytes sent, the limit is {_mib(limit)}")
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > cap:
            raise UploadError(413, f"upload too large: more than the limit of {_mib(limit)} sent")
    return bytes(buf)


def multipart_file(body: bytes, content_type: str, limit: int, field: str = "file") -> tuple[bytes, str]:
    """The bytes and client file name of the multipart part named ``field`` (or the first part with a file name).

    Parsed in memory with python-multipart's streaming parser; nothing touches the disk.

    Raises:
        UploadError: 400 malformed body or no file part, 413 the file part is longer than ``limit`` bytes.
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
    chosen: tuple[bytes, str] | None = None
    for headers, data in parts:
        _, disp = parse_options_header(headers.get(b"content-disposition", b""))
        name = disp.get(b"name", b"").decode("utf-8", "replace")
        filename = disp.get(b"filename")
        if name == field or (chosen is None and filename is not None):
            chosen = (bytes(data), (filename or b"").decode("utf-8", "replace"))
            if name == field:
                break
    if chosen is None:
        raise UploadError(400, f"no file in the upload: send multipart/form-data with the image in a field named "
                               f"{field!r} (e.g. curl -F {field}=@image.png)")
    if len(chosen[0]) > limit:
        raise UploadError(413, f"upload too large: the file has {len(chosen[0])} bytes, the limit is {_mib(limit)}")
    return chosen


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
               layer: str = "layer4") -> FastAPI:
    """The FastAPI application serving the classifier in ``checkpoint`` (loaded once, here).

    Args:
        checkpoint: a ``model.safetensors`` written by training.
        max_upload_mb: largest accepted upload, in MiB (413 beyond).
        max_pixels: largest accepted ``width * height`` (413 beyond; checked before decoding).
        heatmap: offer Grad-CAM overlays and boxes (needs the ``explain`` extra).
        max_side: largest accepted width or height.
        device: ``auto``, ``cpu`` or ``cuda``.
        max_concurrency: requests decoded / predicted at the same time (more wait their turn).
        layer: the layer Grad-CAM weights.
    """
    if heatmap:
        import importlib.util

        missing = [m for m in ("pytorch_grad_cam", "matplotlib") if importlib.util.find_spec(m) is None]
        if missing:
            raise ImportError(f"heatmaps need {', '.join(missing)}: pip install 'deeppneumonia[explain]', "
                              "or serve without heatmaps")
    predictor = Predictor.from_checkpoint(checkpoint, device)
    analyzer = Analyzer(predictor, max_pixels=max_pixels, max_side=max_side, heatmap=heatmap, layer=layer)
    limit = int(max_upload_mb * 1024 * 1024)
    if limit <= 0 or max_pixels <= 0 or max_concurrency <= 0:
        raise ValueError("max_upload_mb, max_pixels and max_concurrency must be positive")
    slots = threading.BoundedSemaphore(max_concurrency)  # taken in the worker thread: not bound to an event loop
    html, csp = _page()
    limits = {"max_upload_bytes": limit, "max_upload_mb": max_upload_mb, "max_pixels": max_pixels,
              "max_side": max_side, "max_concurrency": max_concurrency}

    app = FastAPI(title="deeppneumonia", version=__version__, docs_url=None, redoc_url=None,
                  description="Chest X-ray classification with Grad-CAM overlays. Upload one PNG, JPEG or DICOM "
                              "image to /api/predict. The Swagger UI is disabled (it loads from a CDN); "
                              "this schema is the reference.")
    app.state.analyzer = analyzer

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, exc: UploadError) -> JSONResponse:
        log.info("rejected upload: %s %s", exc.status, exc.detail)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

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
        """``heatmap=false`` skips Grad-CAM (faster): no overlay and no boxes."""
        content_type = request.headers.get("content-type", "")
        media = content_type.split(";")[0].strip().lower()
        if media == "multipart/form-data":
            body = await read_body(request, limit + MULTIPART_ALLOWANCE, limit)
        elif media in _RAW_TYPES:
            body = await read_body(request, limit)
        else:
            raise UploadError(415, f"unsupported content type {media or '(none)'!r}: send multipart/form-data with "
                                   f"a 'file' field, or the raw image bytes as {', '.join(_RAW_TYPES)}")

        def work() -> dict[str, Any]:  # in the threadpool: parsing, decoding and inference never block the loop
            data, filename = multipart_file(body, content_type, limit) if media == "multipart/form-data" else (body, "")
            if not data:
                raise UploadError(400, "empty upload: the file has 0 bytes")
            # the client's file name is never a path; only its .dcm ending counts (preamble-less DICOM)
            name = "upload.dcm" if filename.lower().endswith(".dcm") or media == "application/dicom" else "upload"
            with slots:
                return analyzer.analyse(data, name, heatmap)

        return await run_in_threadpool(work)

    return app


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(checkpoint: str | Path, host: str = "127.0.0.1", port: int = 8000,
        max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, max_pixels: int = DEFAULT_MAX_PIXELS, heatmap: bool = True,
        device: str = "auto", max_concurrency: int = DEFAULT_MAX_CONCURRENCY, log_level: str = "info") -> None:
    """Load the model and serve it with uvicorn until interrupted."""
    import uvicorn

    app = create_app(checkpoint, max_upload_mb, max_pixels, heatmap, device=device, max_concurrency=max_concurrency)
    if not _is_loopback(host):
        log.warning("serving on %s: reachable from other machines, with no authentication and no TLS; "
                    "put a reverse proxy in front", host)
    log.info("serving %s on http://%s:%d/", checkpoint, host, port)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
