"""Classify routes (docs/service.md, API): parse, one call to the Classifier, return the schema."""

from __future__ import annotations

import functools
from typing import Any

from fastapi import APIRouter, Request, Response

from service.api.deps import check_api_key, request_deadline
from service.api.direct import DirectRoute
from service.api.errors import INFERENCE_ERRORS
from service.api.inputs import read_images, wait_disconnect
from service.api.params import classify_options, openapi_parameters, timeout_ms, version_param
from service.classify import Classifier
from service.schemas import ClassifyResponse, JsonImages
from service.settings import Settings

# No FastAPI dependencies or declared parameters: solving them per request cost more than the
# tiny model (service/api/params.py reads and documents them instead; DirectRoute calls the
# endpoints as they are).
router = APIRouter(prefix="/v1", tags=["classify"], route_class=DirectRoute)
JSON_MEDIA_TYPE = "application/json"

_BINARY = {"schema": {"type": "string", "format": "binary"}}
REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "One image as the raw body, several as multipart 'file' parts (answered "
        "in the same order), or JSON base64.",
        "content": {
            "image/png": _BINARY,
            "image/jpeg": _BINARY,
            "image/webp": _BINARY,
            "application/octet-stream": _BINARY,
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "array", "items": _BINARY["schema"]}},
                    "required": ["file"],
                }
            },
            "application/json": {
                "schema": JsonImages.model_json_schema(),
                "example": {"images": ["iVBORw0KGgoAAAANSUhEUgAA..."]},
            },
        },
    }
}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Undecodable image or invalid option"},
    404: {"description": "Unknown model, version or feature-map layer"},
    415: {"description": "Unsupported media type"},
    422: {"description": "Invalid query parameter, header or JSON body; NaN in an output"},
    **INFERENCE_ERRORS,
}


async def _classify(request: Request, model: str, version: int | None) -> Response:
    state = request.app.state
    settings: Settings = state.settings
    check_api_key(request, settings)
    request.state.model = model
    options = classify_options(request)
    deadline = request_deadline(settings, timeout_ms(request))
    classifier: Classifier = state.classifier
    images = await read_images(
        request,
        max_body_bytes=settings.max_body_bytes,
        max_images=settings.max_images_per_request,
        executor=classifier.body_pool,
    )
    response = await classifier.classify(
        model,
        version,
        images,
        options,
        deadline=deadline,
        wait_disconnect=functools.partial(wait_disconnect, request),
    )
    request.state.version = response.version
    return Response(response.model_dump_json(exclude_none=True), media_type=JSON_MEDIA_TYPE)


def _route(*path: str) -> dict[str, Any]:
    """Decorator arguments shared by the classify routes (the parameters are documented here,
    read by service.api.params)."""
    extra = {**REQUEST_BODY, "parameters": openapi_parameters(*path)}
    return {"openapi_extra": extra, "responses": ERRORS, "response_model": ClassifyResponse}


@router.post("/models/{model}/classify", summary="Classify", **_route("model"))
async def classify_model(request: Request) -> Response:
    """Classify with the newest loaded version of `model`."""
    return await _classify(request, request.path_params["model"], None)


@router.post(
    "/models/{model}/versions/{version}/classify",
    summary="Classify with one version",
    **_route("model", "version"),
)
async def classify_version(request: Request) -> Response:
    """Classify with one version of `model`."""
    return await _classify(request, request.path_params["model"], version_param(request))


@router.post("/classify", summary="Classify (default model)", **_route())
async def classify_default(request: Request) -> Response:
    """Classify with the default model (CONVSERVE_DEFAULT_MODEL)."""
    return await _classify(request, request.app.state.settings.default_model, None)
