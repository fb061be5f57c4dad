"""Liveness, readiness and Prometheus exposition."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.api.deps import ManagerDep, MetricsDep
from service.schemas import Health

router = APIRouter(tags=["health"])


# HEAD as well, undocumented: load balancers often probe with it.
@router.head("/health/live", include_in_schema=False)
@router.get("/health/live")
async def live() -> dict[str, str]:
    """The process is up and its event loop answers."""
    return {"status": "ok"}


@router.head("/health/ready", include_in_schema=False)
@router.get("/health/ready", response_model=Health, responses={503: {"model": Health}})
async def ready(manager: ManagerDep) -> JSONResponse:
    """200 only when every configured model is loaded and warmed up; 503 otherwise."""
    if manager.is_ready():
        status = "ok"
    else:
        status = "loading" if not manager.initial_load_done else "not_ready"
    body = Health(
        status=status,
        provider=manager.provider,
        models={m: manager.versions(m) for m in manager.model_names()},
        missing=manager.missing_models(),
        errors=[message for _, message in manager.errors.values()] + manager.scan_problems,
    )
    return JSONResponse(body.model_dump(), status_code=200 if status == "ok" else 503)


@router.get("/metrics", response_class=Response)
async def metrics(registry: MetricsDep) -> Response:
    """Prometheus text exposition (shared/DESIGN.md §7)."""
    return Response(registry.exposition(), media_type=CONTENT_TYPE_LATEST)
