"""Classify routes (shared/DESIGN.md §4): parse, one call to the Classifier, return the schema."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request

from service.api.deps import ClassifierDep, SettingsDep, request_deadline, require_api_key
from service.api.inputs import read_images
from service.schemas import (
    DEFAULT_CHANNELS,
    DEFAULT_TOP_K,
    ClassifyOptions,
    ClassifyResponse,
    JsonImages,
)
from service.settings import Settings

router = APIRouter(prefix="/v1", tags=["classify"], dependencies=[Depends(require_api_key)])

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
    413: {"description": "Body too large"},
    415: {"description": "Unsupported media type"},
    503: {"description": "Not ready or queue full (Retry-After)"},
    504: {"description": "Deadline passed before compute"},
}


async def classify_options(
    top_k: Annotated[int, Query(ge=1, description="Predictions per image.")] = DEFAULT_TOP_K,
    feature_maps: Annotated[
        str | None,
        Query(description="Comma-separated feature-map layers, or 'all'.", examples=["all"]),
    ] = None,
    channels: Annotated[
        int, Query(ge=1, description="Channels per layer: the N with the largest mean activation.")
    ] = DEFAULT_CHANNELS,
    map_format: Annotated[
        Literal["png", "float16"], Query(description="png contact sheet or raw float16.")
    ] = "png",
    cam: Annotated[bool, Query(description="Class activation map of the top class.")] = False,
) -> ClassifyOptions:
    layers = tuple(x.strip() for x in (feature_maps or "").split(",") if x.strip())
    return ClassifyOptions(
        top_k=top_k, feature_maps=layers, channels=channels, map_format=map_format, cam=cam
    )


OptionsDep = Annotated[ClassifyOptions, Depends(classify_options)]
TimeoutHeader = Annotated[
    float | None,
    Header(alias="X-Request-Timeout-Ms", description="Deadline before compute, milliseconds."),
]


async def _classify(
    request: Request,
    classifier: ClassifierDep,
    settings: Settings,
    model: str,
    version: int | None,
    options: ClassifyOptions,
    timeout_ms: float | None,
) -> ClassifyResponse:
    request.state.model = model
    deadline = request_deadline(settings, timeout_ms)
    images = await read_images(
        request,
        max_body_bytes=settings.max_body_bytes,
        max_images=settings.max_images_per_request,
    )

    async def wait_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    response = await classifier.classify(
        model, version, images, options, deadline=deadline, wait_disconnect=wait_disconnect
    )
    request.state.version = response.version
    return response


@router.post(
    "/models/{model}/classify",
    openapi_extra=REQUEST_BODY,
    responses=ERRORS,
    response_model_exclude_none=True,
    summary="Classify",
)
async def classify_model(
    request: Request,
    model: Annotated[str, Path(examples=["lenet5-fashion"])],
    classifier: ClassifierDep,
    settings: SettingsDep,
    options: OptionsDep,
    timeout_ms: TimeoutHeader = None,
) -> ClassifyResponse:
    """Classify with the newest loaded version of `model`."""
    return await _classify(request, classifier, settings, model, None, options, timeout_ms)


@router.post(
    "/models/{model}/versions/{version}/classify",
    openapi_extra=REQUEST_BODY,
    responses=ERRORS,
    response_model_exclude_none=True,
    summary="Classify with one version",
)
async def classify_version(
    request: Request,
    model: str,
    version: Annotated[int, Path(ge=1)],
    classifier: ClassifierDep,
    settings: SettingsDep,
    options: OptionsDep,
    timeout_ms: TimeoutHeader = None,
) -> ClassifyResponse:
    """Classify with one version of `model`."""
    return await _classify(request, classifier, settings, model, version, options, timeout_ms)


@router.post(
    "/classify",
    openapi_extra=REQUEST_BODY,
    responses=ERRORS,
    response_model_exclude_none=True,
    summary="Classify (default model)",
)
async def classify_default(
    request: Request,
    classifier: ClassifierDep,
    settings: SettingsDep,
    options: OptionsDep,
    timeout_ms: TimeoutHeader = None,
) -> ClassifyResponse:
    """Classify with the default model (CONVSERVE_DEFAULT_MODEL)."""
    return await _classify(
        request, classifier, settings, settings.default_model, None, options, timeout_ms
    )
