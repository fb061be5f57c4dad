"""Errors as HTTP answers (docs/service.md, API; docs/v2.md, Errors): `render_error` is the one
mapping, used by the app's exception handlers and by the edge middleware.

Every `ConvserveError` answers its class's status code and `code`; FastAPI's validation errors
answer 422 `invalid_request`; Starlette's HTTP errors (404 and 405 from the router) their own
status; a client gone while its body was being read 499 `client_disconnected` (never sent, as
`ClientDisconnected`); anything else 500 `internal`, logged with its traceback and never sent.
The body's shape follows the path: `{"error": {"code", "message"}}` natively, `{"error":
"<message>"}` on /v2 (the Open Inference Protocol). Each answer is counted in
`convserve_failures_total` by reason.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Scope

from service.errors import ClientDisconnected, ConvserveError, answer_headers, describe_validation
from service.metrics import Metrics

logger = logging.getLogger(__name__)

V2_PREFIX = "/v2"
DEFAULT_MODEL_ROUTE = "/v1/classify"  # classifies with CONVSERVE_DEFAULT_MODEL
INTERNAL = "internal"
INTERNAL_MESSAGE = "internal server error"
HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "not_ready",
}


# OpenAPI `responses` every inference route shares (native classify and v2 infer).
INFERENCE_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"description": "Body too large"},
    503: {"description": "Not ready or queue full (Retry-After)"},
    504: {"description": "Deadline passed before compute"},
}


def is_v2_path(path: str) -> bool:
    return path == V2_PREFIX or path.startswith(V2_PREFIX + "/")


def model_label(scope: Scope, named: str = "") -> str:
    """The `model` label of a request's metrics: the model the request named (`named`, else the
    route's, else its path's, else the default model for POST /v1/classify), when the server
    knows it; "" otherwise, so that requests for
    made-up models cannot grow /metrics."""
    state: dict[str, Any] = scope.get("state") or {}
    path_params: dict[str, Any] = scope.get("path_params") or {}
    name = str(named or state.get("model") or path_params.get("model") or "")
    app_state = scope["app"].state
    if not name and getattr(scope.get("route"), "path", None) == DEFAULT_MODEL_ROUTE:
        settings = getattr(app_state, "settings", None)  # the default model's route
        name = settings.default_model if settings is not None else ""
    manager = getattr(app_state, "manager", None)
    return name if name and manager is not None and manager.knows(name) else ""


def error_response(
    path: str,
    status: int,
    code: str,
    message: str,
    retry_after_s: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The error body of `path`'s protocol, built as a plain dict: a refusal under overload
    should cost little. `headers`: those the error itself carries (the `Allow` of a 405)."""
    body: dict[str, Any] = (
        {"error": message} if is_v2_path(path) else {"error": {"code": code, "message": message}}
    )
    carried = {**(headers or {}), **(answer_headers(status, retry_after_s) or {})}
    return JSONResponse(body, status_code=status, headers=carried or None)


def render_error(scope: Scope, exc: BaseException) -> JSONResponse:
    """The answer to `exc` raised while serving the request of `scope`, counted."""
    retry_after_s = None
    headers = None
    model = None
    if isinstance(exc, ClientDisconnect):
        exc = ClientDisconnected("client disconnected while sending its body")
    if isinstance(exc, ConvserveError):
        status, code, message = exc.status_code, exc.code, exc.message
        retry_after_s = exc.retry_after_s
        model = model_label(scope, exc.model)
        scope.setdefault("state", {})["model"] = model  # the request's metrics carry it
        if status >= 500 and code == INTERNAL:
            logger.error("internal error: %s", message)
    elif isinstance(exc, RequestValidationError):
        status, code = 422, "invalid_request"
        message = describe_validation(exc.errors()) or "invalid request"
    elif isinstance(exc, HTTPException):
        status, message, headers = exc.status_code, str(exc.detail), exc.headers
        code = HTTP_CODES.get(status, "http_error")
    else:
        logger.error(
            "unhandled error on %s %s", scope.get("method"), scope.get("path"), exc_info=exc
        )
        status, code, message = 500, INTERNAL, INTERNAL_MESSAGE
    count_failure(scope, model_label(scope) if model is None else model, code)
    return error_response(scope["path"], status, code, message, retry_after_s, headers)


def count_failure(scope: Scope, model: str, reason: str) -> None:
    metrics: Metrics | None = getattr(scope["app"].state, "metrics", None)
    if metrics is not None:
        metrics.count_failure(model, reason)


async def _handle(request: Request, exc: Exception) -> JSONResponse:
    return render_error(request.scope, exc)


def install_error_handlers(app: FastAPI) -> None:
    """`render_error` answers every error a route raises; the edge middleware answers the rest
    (service/api/edge.py)."""
    for kind in (ConvserveError, RequestValidationError, HTTPException, ClientDisconnect):
        app.add_exception_handler(kind, _handle)
