"""v2 error bodies: `{"error": "<message>"}` on every /v2 path (docs/v2.md, Errors).

The status code still comes from the one hierarchy (`ConvserveError.status_code`), and failures
are counted exactly as on native routes; only the body's shape differs. The native handlers are
wrapped, so paths outside /v2 answer as before.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, cast

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.errors import HTTP_CODES, count_failure
from service.api.labels import model_label
from service.errors import ConvserveError, answer_headers, describe_validation

logger = logging.getLogger(__name__)
V2_PREFIX = "/v2"
Handler = Callable[[Request, Exception], Awaitable[Response]]


def v2_error(status: int, message: str, retry_after_s: int | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": message}, status_code=status, headers=answer_headers(status, retry_after_s)
    )


def is_v2(request: Request) -> bool:
    return is_v2_path(request.url.path)


def is_v2_path(path: str) -> bool:
    return path == V2_PREFIX or path.startswith(V2_PREFIX + "/")


def _v2_body(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, ConvserveError):
        model = model_label(request.scope, exc.model)
        request.state.model = model
        count_failure(request, model, exc.code)
        return v2_error(exc.status_code, exc.message, exc.retry_after_s)
    if isinstance(exc, RequestValidationError):
        problems = describe_validation(exc.errors())
        count_failure(request, model_label(request.scope), "invalid_request")
        return v2_error(422, problems or "invalid request")
    assert isinstance(exc, StarletteHTTPException)
    count_failure(
        request, model_label(request.scope), HTTP_CODES.get(exc.status_code, "http_error")
    )
    return v2_error(exc.status_code, str(exc.detail))


def install_v2_error_handlers(app: FastAPI) -> None:
    """Wrap the native handlers (install those first): /v2 paths get the v2 body."""
    for kind in (ConvserveError, RequestValidationError, StarletteHTTPException):
        native = cast(Handler | None, app.exception_handlers.get(kind))
        app.add_exception_handler(kind, _wrap(native))


def _wrap(native: Handler | None) -> Handler:
    async def handler(request: Request, exc: Exception) -> Response:
        if is_v2(request) or native is None:
            return _v2_body(request, exc)
        return await native(request, exc)

    return handler


class V2Route(APIRoute):
    """A bug behind a v2 route still answers the v2 body (500, no traceback), counted."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        route_handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            try:
                return await route_handler(request)
            except (ConvserveError, RequestValidationError, StarletteHTTPException):
                raise
            except Exception:  # noqa: BLE001 - the last line of defence for v2 bodies
                logger.exception("unhandled error on %s %s", request.method, request.url.path)
                count_failure(request, model_label(request.scope), "internal")
                return v2_error(500, "internal server error")

        return guarded
