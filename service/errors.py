"""The service's one error hierarchy (docs/service.md, API); api/errors.py maps it to HTTP."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

# pydantic's text before the message of a ValueError raised in a validator: noise to a reader.
VALUE_ERROR_PREFIX = "Value error, "


class ConvserveError(Exception):
    """Base error: status code and snake_case code travel with the class."""

    status_code: ClassVar[int] = 500
    code: ClassVar[str] = "internal"
    retry_after_s: ClassVar[int | None] = None

    def __init__(self, message: str, *, model: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.model = model


def answer_headers(status_code: int, retry_after_s: int | None) -> dict[str, str] | None:
    """Headers an error answer carries: Retry-After when a retry may succeed, and the scheme a
    401 asks for (RFC 9110: a 401 names its challenge)."""
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else {}
    if status_code == Unauthorized.status_code:
        headers["WWW-Authenticate"] = 'Bearer realm="convserve"'
    return headers or None


def describe_validation(errors: Sequence[Mapping[str, Any]], *, root: str = "body") -> str:
    """`loc: msg; ...` for a human, without pydantic's help URLs and input echoes; `root` names
    the location of a problem with the whole document (a model validator's)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ())) or root}: "
        f"{str(e.get('msg', '')).removeprefix(VALUE_ERROR_PREFIX)}"
        for e in errors
    )


class BadRequest(ConvserveError):
    status_code = 400
    code = "bad_request"


class InvalidImage(BadRequest):
    code = "invalid_image"


class ImageTooLarge(BadRequest):
    code = "image_too_large"


class ImageTooSmall(BadRequest):
    code = "image_too_small"


class UnsupportedImage(BadRequest):
    """A well-formed image the service deliberately does not classify (animated, odd mode)."""

    code = "unsupported_image"


class InvalidOption(BadRequest):
    code = "invalid_option"


class CamUnavailable(BadRequest):
    code = "cam_unavailable"


class Unauthorized(ConvserveError):
    status_code = 401
    code = "unauthorized"


class Forbidden(ConvserveError):
    status_code = 403
    code = "forbidden"


class NotFound(ConvserveError):
    status_code = 404
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class VersionNotFound(NotFound):
    code = "version_not_found"


class LayerNotFound(NotFound):
    code = "layer_not_found"


class RequestTimeout(ConvserveError):
    """The request body did not arrive within CONVSERVE_BODY_TIMEOUT_S."""

    status_code = 408
    code = "request_timeout"


class Conflict(ConvserveError):
    """The request contradicts how the server runs (e.g. repository control with workers)."""

    status_code = 409
    code = "conflict"


class PayloadTooLarge(ConvserveError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(ConvserveError):
    status_code = 415
    code = "unsupported_media_type"


class SchemaError(ConvserveError):
    status_code = 422
    code = "invalid_request"


class NonFiniteOutput(ConvserveError):
    """The model's output for this input holds NaN or infinity (finite FP32 inputs near
    float32's limit overflow): JSON cannot carry it and no class can be read from it."""

    status_code = 422
    code = "non_finite_output"


class ClientDisconnected(ConvserveError):
    """The client went away before its answer was computed (nginx's 499; never sent)."""

    status_code = 499
    code = "client_disconnected"


class NotReady(ConvserveError):
    status_code = 503
    code = "not_ready"
    retry_after_s = 1


class Overloaded(ConvserveError):
    status_code = 503
    code = "queue_full"
    retry_after_s = 1


class RuntimeFailure(ConvserveError):
    """The runtime raised on this request's batch; the session is being recreated."""

    status_code = 503
    code = "runtime_error"
    retry_after_s = 1


class RuntimeStalled(ConvserveError):
    """The batch outlived the watchdog (CONVSERVE_BATCH_TIMEOUT_S); the session is recreated."""

    status_code = 504
    code = "runtime_timeout"


class DeadlineExceeded(ConvserveError):
    status_code = 504
    code = "deadline_exceeded"


class RepositoryError(Exception):
    """A model version that cannot be served (reported and skipped, never sent to a client)."""
