"""Open Inference Protocol (KServe v2) routes: parse, one call to service/v2, return.

Health and server metadata stay open; model metadata, config and infer take the API key as
/v1 does; the repository extension needs CONVSERVE_ADMIN_KEY (403 while it is unset).
"""

from __future__ import annotations

import functools
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from service.api.deps import (
    ClassifierDep,
    ManagerDep,
    SettingsDep,
    request_deadline,
    require_admin_key,
    require_api_key,
)
from service.api.errors import INFERENCE_ERRORS
from service.api.health import readiness
from service.api.inputs import read_body, wait_disconnect
from service.api.params import TIMEOUT_PARAMETER, timeout_ms
from service.classify import Classifier
from service.errors import BadRequest, Conflict, describe_validation
from service.manager import ModelManager
from service.settings import Settings
from service.v2 import infer as v2_infer
from service.v2 import models as v2_models
from service.v2.schemas import HEADER_LENGTH, RepositoryIndexRequest, RepositoryLoadRequest

TAGS: list[Any] = ["v2 (Open Inference Protocol)"]
MAX_ADMIN_BODY_BYTES = 64 * 1024


health = APIRouter(prefix="/v2", tags=TAGS)
models = APIRouter(prefix="/v2/models", tags=TAGS, dependencies=[Depends(require_api_key)])
admin = APIRouter(prefix="/v2/repository", tags=TAGS, dependencies=[Depends(require_admin_key)])
# X-Request-Timeout-Ms is read by `params.timeout_ms`, as on the native routes.
INFER_OPENAPI: dict[str, Any] = {
    "parameters": [TIMEOUT_PARAMETER],
    "requestBody": {
        "required": True,
        "description": "An Open Inference Protocol request: JSON, or with the binary tensor "
        f"data extension its JSON header ({HEADER_LENGTH} bytes) followed by the binary data "
        "(docs/v2.md).",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}
INFER_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Malformed request, tensor or image; unknown input or output"},
    404: {"description": "Unknown model or version"},
    422: {"description": "Bad X-Request-Timeout-Ms; NaN or infinity in an output"},
    **INFERENCE_ERRORS,
}


@health.get("")
async def server_metadata(settings: SettingsDep) -> dict[str, Any]:
    """Server name, version and the protocol extensions it supports."""
    return v2_models.server_metadata(settings)


@health.get("/health/live")
async def server_live() -> dict[str, bool]:
    return {"live": True}


@health.get("/health/ready", responses={503: {"description": "Not ready"}})
async def server_ready(manager: ManagerDep) -> JSONResponse:
    """200 when every configured model is loaded and warmed (as /health/ready), else 503."""
    ready = manager.is_ready()
    return readiness({"ready": ready}, ready)


@health.get("/models/{model}/ready")
async def model_ready(model: str, manager: ManagerDep) -> dict[str, Any]:
    manager.get(model)
    return {"name": model, "ready": True}


@health.get("/models/{model}/versions/{version}/ready")
async def version_ready(model: str, version: str, manager: ManagerDep) -> dict[str, Any]:
    number = v2_models.parse_version(version, model)
    manager.get(model, number)
    return {"name": model, "version": str(number), "ready": True}  # "01" answers as "1"


@models.get("/{model}")
async def model_metadata(model: str, manager: ManagerDep) -> dict[str, Any]:
    """Inputs, outputs (logits and every feature map) and loaded versions."""
    return v2_models.model_metadata(manager, manager.get(model))


@models.get("/{model}/versions/{version}")
async def version_metadata(model: str, version: str, manager: ManagerDep) -> dict[str, Any]:
    loaded = manager.get(model, v2_models.parse_version(version, model))
    return v2_models.model_metadata(manager, loaded)


@models.get("/{model}/config")
async def model_config(model: str, manager: ManagerDep, settings: SettingsDep) -> dict[str, Any]:
    """Triton's JSON model configuration: max_batch_size, dims, dynamic_batching."""
    return v2_models.model_config(settings, manager.get(model))


@models.get("/{model}/versions/{version}/config")
async def version_config(
    model: str, version: str, manager: ManagerDep, settings: SettingsDep
) -> dict[str, Any]:
    loaded = manager.get(model, v2_models.parse_version(version, model))
    return v2_models.model_config(settings, loaded)


async def _infer(
    request: Request,
    manager: ModelManager,
    classifier: Classifier,
    settings: Settings,
    model: str,
    version: int | None,
    deadline: float | None,
) -> Response:
    request.state.model = model
    # gzip / deflate undone, off the event loop
    body = await read_body(request, settings.max_body_bytes, classifier.body_pool)
    result = await v2_infer.infer(
        manager,
        classifier,
        model,
        version,
        body,
        request.headers.get(HEADER_LENGTH),
        deadline=deadline,
        wait_disconnect=functools.partial(wait_disconnect, request),
    )
    request.state.version = result.version
    if result.header_length is None:
        return Response(result.body, media_type="application/json")
    return Response(
        result.body,
        media_type="application/octet-stream",
        headers={HEADER_LENGTH: str(result.header_length)},
    )


@models.post("/{model}/infer", openapi_extra=INFER_OPENAPI, responses=INFER_ERRORS)
async def infer(
    request: Request,
    model: str,
    manager: ManagerDep,
    classifier: ClassifierDep,
    settings: SettingsDep,
) -> Response:
    """Inference with JSON tensors or the binary tensor data extension (newest version)."""
    deadline = request_deadline(settings, timeout_ms(request))
    return await _infer(request, manager, classifier, settings, model, None, deadline)


@models.post(
    "/{model}/versions/{version}/infer", openapi_extra=INFER_OPENAPI, responses=INFER_ERRORS
)
async def infer_version(
    request: Request,
    model: str,
    version: str,
    manager: ManagerDep,
    classifier: ClassifierDep,
    settings: SettingsDep,
) -> Response:
    deadline = request_deadline(settings, timeout_ms(request))
    number = v2_models.parse_version(version, model)
    return await _infer(request, manager, classifier, settings, model, number, deadline)


@admin.post("/index")
async def repository_index(request: Request, manager: ManagerDep) -> list[dict[str, str]]:
    """Every model version in the repository folder, with its state."""
    body = await read_body(request, MAX_ADMIN_BODY_BYTES)
    try:
        options = RepositoryIndexRequest.model_validate_json(body or b"{}")
    except ValidationError as err:
        raise BadRequest(
            f"invalid repository index request: {describe_validation(err.errors())}"
        ) from err
    return await v2_models.repository_index(manager, ready_only=options.ready)


def _single_process(settings: Settings, action: str) -> None:
    """Conflict for a repository change that would reach one worker process of several."""
    if settings.workers > 1:
        raise Conflict(
            f"{action} would reach one of {settings.workers} worker processes "
            "(CONVSERVE_WORKERS): change the repository folder and let "
            "CONVSERVE_MODEL_POLL_SECONDS reload every worker, or run one worker"
        )


@admin.post("/models/{model}/load")
async def load_model(
    request: Request, model: str, manager: ManagerDep, settings: SettingsDep
) -> dict[str, Any]:
    """(Re)scan and load every version of `model`; it rejoins the readiness set."""
    _single_process(settings, f"loading {model!r}")
    body = await read_body(request, MAX_ADMIN_BODY_BYTES)
    try:
        options = RepositoryLoadRequest.model_validate_json(body or b"{}")
    except ValidationError as err:
        problems = describe_validation(err.errors())
        raise BadRequest(f"invalid load request: {problems}") from err
    overrides = [k for k in options.parameters if k == "config" or k.startswith("file:")]
    if overrides:
        raise BadRequest(
            f"load overrides {overrides} are not supported: models come from the repository only"
        )
    await manager.load_model(model)
    return {}


@admin.post("/models/{model}/unload")
async def unload_model(model: str, manager: ManagerDep, settings: SettingsDep) -> dict[str, Any]:
    """Stop serving `model` (in-flight requests finish); readiness no longer waits for it."""
    _single_process(settings, f"unloading {model!r}")
    await manager.unload_model(model)
    return {}
