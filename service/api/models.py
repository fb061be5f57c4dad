"""Model listing, metadata and first-layer filter images."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse

from service.api.deps import ManagerDep, require_api_key
from service.api.params import version_param
from service.errors import LayerNotFound
from service.manager import ModelManager
from service.metadata import Source
from service.repository import inside
from service.schemas import FeatureMapInfo, ModelDetail, ModelList, ModelSummary

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(require_api_key)])
# What an absent metadata `source` means (service/metadata.py): a convserve training run.
TRAINING_SOURCE = Source(kind="training")


@router.get("/models")
async def list_models(manager: ManagerDep) -> ModelList:
    """Every loaded model with its loaded versions (the newest serves unversioned routes)."""
    return ModelList(
        models=[
            ModelSummary(
                name=m, versions=manager.versions(m), default_version=manager.versions(m)[-1]
            )
            for m in manager.model_names()
        ]
    )


NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "Unknown model or version"}}


@router.get("/models/{model}", responses=NOT_FOUND)
async def describe_model(model: str, manager: ManagerDep) -> ModelDetail:
    """Labels, input, preprocessing, feature-map layers with shapes, and versions (newest)."""
    return _detail(manager, model, None)


@router.get("/models/{model}/versions/{version}", responses=NOT_FOUND)
async def describe_version(
    request: Request, model: str, version: str, manager: ManagerDep
) -> ModelDetail:
    """The same for one loaded version (`version`: an integer >= 1, read as classify reads it)."""
    return _detail(manager, model, version_param(request))


def _detail(manager: ModelManager, model: str, version: int | None) -> ModelDetail:
    meta = manager.get(model, version).metadata
    return ModelDetail(
        name=meta.name,
        version=meta.version,
        versions=manager.versions(model),
        architecture=meta.architecture,
        labels=meta.labels,
        input=meta.input.model_dump(),
        preprocessing=meta.preprocessing.model_dump(),
        feature_maps=[
            FeatureMapInfo(layer=f.layer, output=f.output, shape=f.shape) for f in meta.feature_maps
        ],
        filters=[f.layer for f in meta.filters],
        cam=meta.cam is not None,
        max_batch_size=meta.max_batch_size,
        training=meta.training,
        source=meta.source or TRAINING_SOURCE,
        precision=meta.export.precision,
    )


@router.get(
    "/models/{model}/filters/{layer}",
    response_class=FileResponse,
    responses={200: {"content": {"image/png": {}}, "description": "PNG grid of conv weights"}},
)
async def filter_image(model: str, layer: str, manager: ManagerDep) -> FileResponse:
    """PNG grid of a conv layer's weights, as written by the exporter (`layer`: full name, or
    its last part when unique, as `feature_maps` takes it)."""
    loaded = manager.get(model)
    image = loaded.metadata.filter_image(layer)
    if image is None:
        known = ", ".join(f.layer for f in loaded.metadata.filters) or "none"
        raise LayerNotFound(
            f"{model} has no filter image for {layer!r} (known: {known})", model=model
        )
    path = inside(manager.root, loaded.path / image.file)
    if not path.is_file():
        raise LayerNotFound(f"{model}: filter image for {layer!r} is missing", model=model)
    return FileResponse(path, media_type="image/png")
