"""Request parameters read from the request itself: the classify routes' path and query, and
X-Request-Timeout-Ms (the one reading of it, for native and v2 routes and the edge).

FastAPI's per-request dependency solving (a dozen parameters and dependencies on the classify
routes) cost more than the model on the tiny-model path (docs/benchmarks.md), so the classify
routes take only the `Request` and read their parameters here: the same pydantic validation, the
same 422 `invalid_request` answers (raised as FastAPI's `RequestValidationError`, so
`render_error` answers them), and `openapi_parameters` describes them in /openapi.json.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.metadata import MAX_INT_DIGITS, parse_version
from service.schemas import DEFAULT_CHANNELS, DEFAULT_TOP_K, ClassifyOptions

TIMEOUT_HEADER = "X-Request-Timeout-Ms"


class ClassifyQuery(BaseModel):
    """The classify routes' query parameters (unknown ones are ignored)."""

    model_config = ConfigDict(extra="ignore")
    top_k: int = Field(DEFAULT_TOP_K, ge=1, description="Predictions per image.")
    feature_maps: str | None = Field(
        None, description="Comma-separated feature-map layers, or 'all'.", examples=["all"]
    )
    channels: int = Field(
        DEFAULT_CHANNELS,
        ge=1,
        description="Channels per layer: the N with the largest mean activation.",
    )
    map_format: Literal["png", "float16"] = Field(
        "png", description="png contact sheet or raw float16."
    )
    cam: bool = Field(False, description="Class activation map of the top class.")


DEFAULT_OPTIONS = ClassifyOptions()


def _invalid(where: str, errors: list[Any]) -> RequestValidationError:
    return RequestValidationError([{**e, "loc": (where, *e.get("loc", ()))} for e in errors])


def classify_options(request: Request) -> ClassifyOptions:
    """The query's options; 422 for a value out of range or of the wrong type."""
    if not request.scope.get("query_string"):
        return DEFAULT_OPTIONS
    try:
        query = ClassifyQuery.model_validate(dict(request.query_params))
    except ValidationError as err:
        raise _invalid("query", list(err.errors(include_url=False, include_input=False))) from err
    layers = tuple(x.strip() for x in (query.feature_maps or "").split(",") if x.strip())
    return ClassifyOptions(
        top_k=query.top_k,
        feature_maps=layers,
        channels=query.channels,
        map_format=query.map_format,
        cam=query.cam,
    )


def parse_timeout_ms(text: str | bytes) -> float | None:
    """An X-Request-Timeout-Ms value as a positive finite number of milliseconds; None for
    anything else (Python-only syntax such as "1_000" included)."""
    if ("_" in text) if isinstance(text, str) else (b"_" in text):
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def timeout_ms(request: Request) -> float | None:
    """X-Request-Timeout-Ms (`parse_timeout_ms`); anything else is 422 (as a bad query
    parameter is), whether it is no number or a number <= 0."""
    text = request.headers.get(TIMEOUT_HEADER)
    if text is None:
        return None
    value = parse_timeout_ms(text)
    if value is None:
        message = "must be a positive number of milliseconds"
        error = {"type": "float_parsing", "loc": (TIMEOUT_HEADER,), "msg": message}
        raise _invalid("header", [error])
    return value


def version_param(request: Request) -> int:
    """The `{version}` path parameter, a positive integer."""
    version = parse_version(str(request.path_params["version"]))
    if version is None:
        message = f"must be an integer >= 1 of at most {MAX_INT_DIGITS} digits"
        error = {"type": "int_parsing", "loc": ("version",), "msg": message}
        raise _invalid("path", [error])
    return version


def _query_parameters() -> list[dict[str, Any]]:
    schema = ClassifyQuery.model_json_schema()
    parameters = []
    for name, spec in schema["properties"].items():
        spec = {k: v for k, v in spec.items() if k not in {"title", "description", "examples"}}
        parameters.append(
            {
                "name": name,
                "in": "query",
                "required": False,
                "description": schema["properties"][name].get("description", ""),
                "schema": spec,
            }
        )
    return parameters


TIMEOUT_PARAMETER = {
    "name": TIMEOUT_HEADER,
    "in": "header",
    "required": False,
    "description": "Deadline before compute, milliseconds.",
    "schema": {"type": "number", "exclusiveMinimum": 0},
}
_MODEL_PARAMETER = {
    "name": "model",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "example": "lenet5-fashion",
}
_VERSION_PARAMETER = {
    "name": "version",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1},
}


def openapi_parameters(*path: str) -> list[dict[str, Any]]:
    """OpenAPI `parameters` of a classify route with these path parameters."""
    by_name = {"model": _MODEL_PARAMETER, "version": _VERSION_PARAMETER}
    return [by_name[p] for p in path] + _query_parameters() + [TIMEOUT_PARAMETER]
