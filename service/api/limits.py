"""Request body limit, enforced in pure ASGI middleware for every route (Starlette has none).

A declared `Content-Length` above the limit is answered 413 before a byte of the body is read.
A body without a length (chunked) or one that lies is counted as it streams: the first
`http.request` message that takes the total past the limit raises `PayloadTooLarge` inside the
app, which the one error mapping turns into 413 (native or v2 body). Nothing downstream can read
more than `max_body_bytes`, whatever parser it uses.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_response
from service.errors import PayloadTooLarge


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None


def too_large_response(path: str, error: PayloadTooLarge) -> JSONResponse:
    """413 in the body shape of the path's protocol (v2: `{"error": msg}`, DESIGN §6)."""
    if path == "/v2" or path.startswith("/v2/"):
        return JSONResponse({"error": error.message}, status_code=error.status_code)
    return error_response(error.status_code, error.code, error.message)


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            error = PayloadTooLarge(f"request body of {declared} bytes exceeds {limit}")
            await too_large_response(scope["path"], error)(scope, receive, send)
            return
        received = 0
        response_started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(f"request body exceeds {limit} bytes")
            return message

        async def watch_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, watch_send)
        except PayloadTooLarge as err:  # read outside a route (no handler saw it)
            if response_started:
                raise
            await too_large_response(scope["path"], err)(scope, receive, send)
