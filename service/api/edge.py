"""The one ASGI middleware in front of every route: admission limits, security headers, request
metrics and the catch-all 500, in one layer (each extra layer cost every request a coroutine
frame and a send wrapper: docs/benchmarks.md).

Admission:
- A declared `Content-Length` above `max_body_bytes` is answered 413 before a byte of the body
  is read. A body without a length (chunked) or one that lies is counted as it streams: the
  first `http.request` message that takes the total past the limit raises `PayloadTooLarge`
  inside the app, which `render_error` (service/api/errors.py) turns into 413 (native or v2
  body). This is the service's one count of body bytes: nothing downstream can read more than
  `max_body_bytes`, whatever parser it uses.
- A body that takes longer than `body_timeout_s` to arrive gets 408.
- The bytes of every body received so far, until its request is answered, count against
  `max_body_memory_bytes`, all requests together: a request whose declared `Content-Length`
  does not fit in what is left is answered 503 `queue_full` before a byte is read, and a body
  message that takes the total past it raises `Overloaded` inside the app (503). Bytes are
  counted as they arrive, not as declared, so senders trickling their bodies in hold only what
  they sent (docs/security.md).
- The batcher's queue is bounded, but a request reaches it only after its body is read and its
  images decoded; under a flood decoding would queue without bound. So an inference request
  (POST .../classify, .../infer) takes one of `max_inflight_requests` slots when its whole body
  has arrived, and holds it until answered. With none free it is answered 503 `queue_full` with
  `Retry-After`: at once, body unread, when they are already taken as it begins; else when its
  body has arrived, before its images are decoded. Slots are not taken earlier: senders
  trickling their bodies in (slowloris) would hold every slot for `body_timeout_s` and turn
  every other client's request into a 503 (docs/security.md). Requests whose deadline
  (`X-Request-Timeout-Ms`, else `CONVSERVE_REQUEST_TIMEOUT_MS`) is shorter than the lag of a
  saturated event loop (more than 10 ms behind, service/looplag.py) are answered 503 at once,
  before their body is read: they already waited that long unseen, and each of their steps
  would wait as long again. Health, metrics and the page are never refused.

Every answer gets nosniff and DENY headers (the web page sets its own stricter set, never
overwritten). An exception that no exception handler answered is answered here by
`render_error` too: an unexpected one as 500 `internal` (never a stack trace), logged with its
traceback and counted in `convserve_failures_total`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import count_failure, model_label, render_error
from service.api.params import TIMEOUT_HEADER, parse_timeout_ms
from service.errors import ConvserveError, NotReady, Overloaded, PayloadTooLarge, RequestTimeout
from service.looplag import LoopLag
from service.metadata import ascii_int
from service.metrics import Metrics

logger = logging.getLogger(__name__)

INFERENCE_SUFFIXES = ("/classify", "/infer")
UNMATCHED_ROUTE = "unmatched"
# Timer jitter is ~1 ms on an idle loop; a loop this far behind is saturated.
SATURATED_LAG_MS = 10.0
SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"))
TIMEOUT_HEADER_KEY = TIMEOUT_HEADER.lower().encode()


def _header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of header `name` (lower case), before any parsing."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


def declared_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    if value is None:
        return None
    return ascii_int(value.strip())


def declared_too_large(declared: int | None, limit: int) -> PayloadTooLarge | None:
    """413 for a declared Content-Length (`declared_length`) above `limit`, before a byte of the
    body is read."""
    if declared is None or declared <= limit:
        return None
    return PayloadTooLarge(f"request body of {declared} bytes exceeds {limit}")


def _timeout_ms(scope: Scope) -> float:
    """X-Request-Timeout-Ms when it is valid, else 0 (the route answers 422 for a bad one)."""
    value = _header(scope, TIMEOUT_HEADER_KEY)
    return (parse_timeout_ms(value) if value is not None else None) or 0.0


def _with_security_headers(message: Message) -> Message:
    headers = list(message.get("headers", ()))
    present = {name.lower() for name, _ in headers}
    headers += [(n, v) for n, v in SECURITY_HEADERS if n not in present]
    return {**message, "headers": headers}


class CutOff:
    """Requests still running when the graceful shutdown ran out: uvicorn cancels their tasks,
    and each is answered 503 here (when its answer had not begun) and counted."""

    def __init__(self) -> None:
        self.count = 0


class EdgeMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        max_body_memory_bytes: int,
        body_timeout_s: float,
        max_inflight_requests: int,
        request_timeout_ms: float = 0,
        loop_lag: LoopLag | None = None,
        routes: Sequence[BaseRoute] = (),
        cut_off: CutOff | None = None,
    ) -> None:
        self.app = app
        self.cut_off = cut_off or CutOff()
        self.default_timeout_ms = request_timeout_ms
        self.loop_lag = loop_lag
        self.max_body_bytes = max_body_bytes
        self.max_body_memory = max_body_memory_bytes
        self.body_memory = 0  # bytes of the bodies received by requests not yet answered
        self.body_timeout_s = body_timeout_s or None
        self.max_inflight = max_inflight_requests
        self.inflight = 0
        # The routes behind, to label a refusal answered here as the router would have.
        self.routes = list(routes)
        self.inference_routes = [
            r for r in routes if str(getattr(r, "path", "")).endswith(INFERENCE_SUFFIXES)
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        inference = scope["method"] == "POST" and scope["path"].endswith(INFERENCE_SUFFIXES)
        status = 500
        response_started = False
        counted = False
        held = 0

        def hold(size: int) -> None:
            """Count `size` more body bytes of this request against the memory limit."""
            nonlocal held
            if self.body_memory + size > self.max_body_memory:
                raise self._no_body_memory()
            self.body_memory += size
            held += size

        def admit() -> None:
            """Take an in-flight slot: called once the whole body has arrived."""
            nonlocal counted
            if self.inflight >= self.max_inflight:
                raise self._overloaded()
            self.inflight += 1
            counted = True

        async def edge_send(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = int(message["status"])
                response_started = True
                message = _with_security_headers(message)
            await send(message)

        try:
            refusal = self._refusal(scope, inference)
            if refusal is not None:
                # Matched first: the refusal's failure and the request's own metrics are
                # labelled with the route and model the router would have given it.
                self._match_route(scope, inference)
                await render_error(scope, refusal)(scope, receive, edge_send)
                return
            limited = self._limited(receive, hold, admit if inference else None)
            await self.app(scope, limited, edge_send)
        except asyncio.CancelledError:
            # Only uvicorn cancels a request's task: its graceful shutdown ran out
            # (CONVSERVE_SHUTDOWN_TIMEOUT_S). Answered and counted here, not re-raised: the
            # task ends with the answer instead of uvicorn's plain-text 500 and a traceback.
            self.cut_off.count += 1
            status = 503
            if not response_started:
                refusal = NotReady("the server shut down before this request was answered")
                with contextlib.suppress(Exception):
                    await render_error(scope, refusal)(scope, receive, edge_send)
        except Exception as exc:  # noqa: BLE001 - the last line of defence: never a traceback
            if not response_started:
                await render_error(scope, exc)(scope, receive, edge_send)
            elif isinstance(exc, ConvserveError):
                logger.warning("%s after the answer began: %s", type(exc).__name__, exc.message)
            else:
                logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
                status = 500
                count_failure(scope, model_label(scope), "internal")
        finally:
            if counted:
                self.inflight -= 1
            self.body_memory -= held
            _observe(scope, status, time.perf_counter() - started)

    def _refusal(self, scope: Scope, inference: bool) -> ConvserveError | None:
        declared = declared_length(scope)
        too_large = declared_too_large(declared, self.max_body_bytes)
        if too_large is not None:
            return too_large
        if self.body_memory + (declared or 0) > self.max_body_memory:
            return self._no_body_memory()
        if not inference:
            return None
        if self.inflight >= self.max_inflight:  # held by requests whose body has arrived
            return self._overloaded()
        budget_ms = _timeout_ms(scope) or self.default_timeout_ms
        lag_ms = self.loop_lag.lag_s * 1000 if self.loop_lag is not None else 0.0
        if budget_ms and lag_ms > max(budget_ms, SATURATED_LAG_MS):
            return Overloaded(
                f"the server runs {lag_ms:.0f} ms behind, more than the request's deadline "
                f"({budget_ms:g} ms): retry later"
            )
        return None

    def _overloaded(self) -> Overloaded:
        return Overloaded(
            f"{self.inflight} inference requests in progress, the most allowed: retry later"
        )

    def _no_body_memory(self) -> Overloaded:
        return Overloaded(
            f"request bodies held take {self.body_memory} bytes, the most allowed being "
            f"{self.max_body_memory}: retry later"
        )

    def _match_route(self, scope: Scope, inference: bool) -> None:
        """Put the route the request would have taken, and its path parameters, in `scope`, as
        the router does: a refusal answered here is counted under its route and model, not as
        an unmatched request. A refused inference request tries only the inference routes."""
        for route in self.inference_routes if inference else self.routes:
            match, child_scope = route.matches(scope)
            if match == Match.FULL:
                scope.update(child_scope)
                return

    def _limited(
        self,
        receive: Receive,
        hold: Callable[[int], None],
        on_body_end: Callable[[], None] | None,
    ) -> Receive:
        """`receive`, counting the body against the limit and its arrival against the timeout
        (after the body, e.g. disconnect watching: unbounded); `hold` is given each body
        message's size, and `on_body_end` is called when the last one arrives (either may
        raise, as the limits do)."""
        limit = self.max_body_bytes
        timeout_s = self.body_timeout_s
        deadline = None if timeout_s is None else asyncio.get_running_loop().time() + timeout_s
        received = 0
        body_done = False

        async def limited_receive() -> Message:
            nonlocal received, body_done
            if body_done or deadline is None:
                message = await receive()
            else:
                try:
                    async with asyncio.timeout_at(deadline):  # a timer, not a task
                        message = await receive()
                except TimeoutError as err:
                    raise RequestTimeout(f"request body not received within {timeout_s} s") from err
            if message["type"] == "http.request" and not body_done:
                size = len(message.get("body", b""))
                received += size
                body_done = not message.get("more_body", False)
                if received > limit:
                    raise PayloadTooLarge(f"request body exceeds {limit} bytes")
                hold(size)
                if body_done and on_body_end is not None:
                    on_body_end()
            return message

        return limited_receive


def _metrics(scope: Scope) -> Metrics:
    metrics: Metrics = scope["app"].state.metrics
    return metrics


def _route_label(scope: Scope, status: int) -> str:
    """The route template; for the plain routes FastAPI adds (/docs, /openapi.json) and the
    page's static files, which leave no route in the scope, the path itself when answered
    (a bounded set: those routes and files); "unmatched" for a path nothing serves."""
    route = scope.get("route")
    if route is not None:
        return str(getattr(route, "path", UNMATCHED_ROUTE))
    if "endpoint" in scope and status < 400:
        return str(scope["path"])
    return UNMATCHED_ROUTE


def _observe(scope: Scope, status: int, duration_s: float) -> None:
    template = _route_label(scope, status)
    state: dict[str, Any] = scope.get("state") or {}
    model = model_label(scope)
    version = str(state.get("version", ""))
    _metrics(scope).observe_request(model, version, template, str(status), duration_s)
