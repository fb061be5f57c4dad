"""The one mapping from errors to HTTP answers (docs/service.md, API), each counted by reason."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.labels import model_label
from service.errors import ConvserveError, answer_headers, describe_validation
from service.metrics import Metrics

logger = logging.getLogger(__name__)

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "not_ready",
}


def error_response(
    status: int, code: str, message: str, retry_after_s: int | None = None
) -> JSONResponse:
    """The native error body `{"error": {"code", "message"}}`, built as a plain dict: a refusal
    under overload should cost little."""
    body = {"error": {"code": code, "message": message}}
    return JSONResponse(body, status_code=status, headers=answer_headers(status, retry_after_s))


def count_failure(request: Request, model: str, reason: str) -> None:
    metrics: Metrics | None = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.count_failure(model, reason)


async def _convserve_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ConvserveError)
    model = model_label(request.scope, exc.model)
    request.state.model = model
    if exc.status_code >= 500 and exc.code == "internal":
        logger.error("internal error: %s", exc.message)
    count_failure(request, model, exc.code)
    return error_response(exc.status_code, exc.code, exc.message, exc.retry_after_s)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = describe_validation(exc.errors())
    count_failure(request, model_label(request.scope), "invalid_request")
    return error_response(422, "invalid_request", problems or "invalid request")


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = HTTP_CODES.get(exc.status_code, "http_error")
    count_failure(request, model_label(request.scope), code)
    return error_response(exc.status_code, code, str(exc.detail))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ConvserveError, _convserve_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
