"""Liveness, readiness and Prometheus exposition."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.api.deps import ManagerDep, MetricsDep
from service.errors import NotReady, answer_headers
from service.schemas import Health

router = APIRouter(tags=["health"])


def readiness(body: dict[str, object], ready: bool) -> JSONResponse:
    """200, or 503 with Retry-After as every not-ready answer carries."""
    if ready:
        return JSONResponse(body)
    return JSONResponse(body, 503, headers=answer_headers(503, NotReady.retry_after_s))


@router.get("/health/live")
async def live() -> dict[str, str]:
    """The process is up and its event loop answers."""
    return {"status": "ok"}


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
    return readiness(body.model_dump(), status == "ok")


@router.get("/metrics", response_class=Response)
async def metrics(registry: MetricsDep) -> Response:
    """Prometheus text exposition (docs/service.md, Metrics)."""
    return Response(registry.exposition(), media_type=CONTENT_TYPE_LATEST)
