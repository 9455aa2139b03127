"""ASGI middleware of the service (imported by :mod:`deeppneumonia.serve.app` only; needs the ``serve`` extra)."""

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class SecurityHeaders:
    """ASGI middleware: add nosniff, no-referrer and no-store headers to each response that does not set them.

    A plain ASGI wrapper, not ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware re-streams every
    request body through an extra task and queue (about 5 % of the Python samples of a py-spy profile of
    ``benchmarks/serve_load.py``; no throughput change was measurable above that benchmark's noise).
    """

    HEADERS = ((b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
               (b"cache-control", b"no-store"))

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                message = {**message, "headers": headers + [(k, v) for k, v in self.HEADERS if k not in present]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
