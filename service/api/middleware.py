"""Pure ASGI middleware: request metrics per route template, and the catch-all 500.

An unexpected exception becomes the DESIGN §6 body with code `internal` (never a stack trace),
is logged with its traceback server-side and counted in `convserve_failures_total`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.errors import error_response
from service.metrics import Metrics

logger = logging.getLogger(__name__)
UNMATCHED_ROUTE = "unmatched"


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = int(message["status"])
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception:  # noqa: BLE001 - the last line of defence: a 500, never a traceback
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            status = 500
            self._metrics(scope).failures.labels(self._model(scope), "internal").inc()
            if not response_started:
                response = error_response(500, "internal", "internal server error")
                await response(scope, receive, send)
        finally:
            self._observe(scope, status, time.perf_counter() - started)

    @staticmethod
    def _metrics(scope: Scope) -> Metrics:
        metrics: Metrics = scope["app"].state.metrics
        return metrics

    @staticmethod
    def _model(scope: Scope) -> str:
        state: dict[str, Any] = scope.get("state") or {}
        path_params: dict[str, Any] = scope.get("path_params") or {}
        return str(state.get("model") or path_params.get("model") or "")

    def _observe(self, scope: Scope, status: int, duration_s: float) -> None:
        route = scope.get("route")
        template = str(getattr(route, "path", UNMATCHED_ROUTE))
        state: dict[str, Any] = scope.get("state") or {}
        model = self._model(scope)
        version = str(state.get("version", ""))
        metrics = self._metrics(scope)
        metrics.requests.labels(model, version, template, str(status)).inc()
        metrics.request_duration.labels(model, template).observe(duration_s)


# Every answer: browsers must not sniff JSON into HTML, nor frame it. The web page (api/web.py)
# sets its own, stricter set, which these never overwrite.
DEFAULT_SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"))


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                present = {name.lower() for name, _ in headers}
                headers += [(n, v) for n, v in DEFAULT_SECURITY_HEADERS if n not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
