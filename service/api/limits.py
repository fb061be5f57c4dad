"""Admission limits in pure ASGI middleware: the request body's size and arrival time on every
route, and the number of inference requests in progress.

A declared `Content-Length` above the limit is answered 413 before a byte of the body is read.
A body without a length (chunked) or one that lies is counted as it streams: the first
`http.request` message that takes the total past the limit raises `PayloadTooLarge` inside the
app, which the one error mapping turns into 413 (native or v2 body). Nothing downstream can read
more than `max_body_bytes`, whatever parser it uses.

The batcher's queue is bounded, but a request reaches it only after its body is read and its
images decoded; under a flood those stages would queue without bound and every accepted
request would wait. So inference requests (POST .../classify, .../infer) beyond
`max_inflight_requests` in progress are answered 503 `queue_full` with `Retry-After` at once,
before their body is read. Health, metrics and the page are never refused.
"""

from __future__ import annotations

import asyncio
import time

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_response
from service.errors import ConvserveError, Overloaded, PayloadTooLarge, RequestTimeout
from service.metrics import Metrics

INFERENCE_SUFFIXES = ("/classify", "/infer")


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isascii() and text.isdigit() else None
    return None


def error_answer(scope: Scope, error: ConvserveError) -> JSONResponse:
    """The error in the body shape of the path's protocol (v2: `{"error": msg}`, DESIGN §6),
    counted in convserve_failures_total as the exception handlers count theirs."""
    metrics: Metrics | None = getattr(scope["app"].state, "metrics", None)
    if metrics is not None:
        metrics.failures.labels("", error.code).inc()
    path = scope["path"]
    if path == "/v2" or path.startswith("/v2/"):
        headers = {"Retry-After": str(error.retry_after_s)} if error.retry_after_s else None
        return JSONResponse({"error": error.message}, error.status_code, headers=headers)
    return error_response(error.status_code, error.code, error.message, error.retry_after_s)


class BodyLimitMiddleware:
    """413 past `max_body_bytes`; 408 when the body takes longer than `body_timeout_s` to
    arrive (0: no limit): a slow sender must not hold an in-flight slot for ever."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, body_timeout_s: float = 0) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_s = body_timeout_s or None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            error = PayloadTooLarge(f"request body of {declared} bytes exceeds {limit}")
            await error_answer(scope, error)(scope, receive, send)
            return
        received = 0
        body_done = False
        response_started = False
        deadline = (
            time.monotonic() + self.body_timeout_s if self.body_timeout_s is not None else None
        )

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done or deadline is None:  # after the body: disconnect watching, unbounded
                message = await receive()
            else:
                try:
                    message = await asyncio.wait_for(receive(), deadline - time.monotonic())
                except TimeoutError as err:
                    raise RequestTimeout(
                        f"request body not received within {self.body_timeout_s} s"
                    ) from err
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
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
        except (PayloadTooLarge, RequestTimeout) as err:  # read outside a route
            if response_started:
                raise
            await error_answer(scope, err)(scope, receive, send)


class InflightLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_inflight_requests: int) -> None:
        self.app = app
        self.max_inflight = max_inflight_requests
        self.inflight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or not scope["path"].endswith(INFERENCE_SUFFIXES)
        ):
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.max_inflight:
            error = Overloaded(
                f"{self.inflight} inference requests in progress, the most allowed: retry later"
            )
            await error_answer(scope, error)(scope, receive, send)
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1
