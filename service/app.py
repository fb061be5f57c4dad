"""`create_app(settings)`: the FastAPI application; everything is built in its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.routing import APIRoute
from fastapi.telemetry import TelemetryConfig
from starlette.routing import BaseRoute

from service.api import classify, health, models, v2, web
from service.api.edge import CutOff, EdgeMiddleware
from service.api.errors import install_error_handlers
from service.classify import Classifier
from service.looplag import LoopLag
from service.manager import ModelManager
from service.metrics import Metrics
from service.preprocess import configure_pillow
from service.settings import Settings

logger = logging.getLogger(__name__)

DESCRIPTION = """CNN image classification with ONNX Runtime and dynamic batching.

Send one image as the raw body (`image/png`, `image/jpeg`, `image/webp`), several as
multipart `file` parts, or JSON `{"images": [base64, ...]}`. Errors answer
`{"error": {"code": ..., "message": ...}}`.
"""

CORS_REQUEST_HEADERS = [
    "Authorization",
    "X-API-Key",
    "Content-Type",
    "X-Request-Timeout-Ms",
    "Inference-Header-Content-Length",
]


TELEMETRY_OFF: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}

# Every route, in the order the router tries them; v2 is the Open Inference Protocol (docs/v2.md).
ROUTERS = (
    classify.router,
    models.router,
    health.router,
    v2.health,
    v2.models,
    v2.admin,
    web.router,
)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_pillow(settings.max_image_pixels)
    loop_lag = LoopLag()
    cut_off = CutOff()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics = Metrics()
        manager = ModelManager(settings, metrics)
        classifier = Classifier(settings, manager, metrics)
        app.state.settings = settings
        app.state.metrics = metrics
        app.state.manager = manager
        app.state.classifier = classifier
        initial_load = asyncio.create_task(_initial_load(manager), name="initial-load")
        tasks = [initial_load, asyncio.create_task(loop_lag.run(), name="loop-lag")]
        if settings.workers > 1:
            # One of several workers on a port takes connections only with its models loaded:
            # the others answer meanwhile, instead of this one answering 503 not_ready to
            # requests that a ready probe (reaching another worker) let through.
            await initial_load
        if settings.model_poll_seconds > 0:
            poll = manager.poll(settings.model_poll_seconds)
            tasks.append(asyncio.create_task(poll, name="repository-poll"))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await _drain(manager, settings.shutdown_timeout_s, cut_off)
            classifier.close()
            metrics.close()

    app = FastAPI(
        title="convserve",
        description=DESCRIPTION,
        version="0.1.0",
        lifespan=lifespan,
        telemetry=None if settings.opentelemetry else TELEMETRY_OFF,
        # A path with a stray slash is a 404 like any unknown path, not a redirect built from
        # the request's Host header (which a client chooses).
        redirect_slashes=False,
    )
    routes = with_head([route for router in ROUTERS for route in router.routes])
    if settings.cors_origin_list:  # off by default (docs/security.md)
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST"],
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=["Retry-After", "Inference-Header-Content-Length"],
        )
    # Added last, so it is the outermost of the app's own middleware: limits, headers, metrics
    # and the error answers of service/api/errors.py hold for every answer.
    app.add_middleware(
        EdgeMiddleware,
        max_body_bytes=settings.max_body_bytes,
        max_body_memory_bytes=settings.max_body_memory_bytes,
        body_timeout_s=settings.body_timeout_s,
        max_inflight_requests=settings.max_inflight_requests,
        request_timeout_ms=settings.request_timeout_ms,
        loop_lag=loop_lag,
        cut_off=cut_off,
        routes=routes,
    )
    install_error_handlers(app)
    # The routes themselves, not included routers: FastAPI walks an included router's own
    # matching layers on every request (~5 % of the event loop's time per request on LeNet-5).
    # Each router's prefix is already in its routes' paths.
    app.router.routes.extend(routes)
    return app


def with_head(routes: list[BaseRoute]) -> list[BaseRoute]:
    """`routes` and, for each GET-only route, a HEAD twin kept out of the schema: HTTP asks that
    a GET resource answer HEAD (load balancers and monitors probe with it), which Starlette's
    routes do and FastAPI's do not. The answer is the GET answer's head; uvicorn sends no body."""
    twins: list[BaseRoute] = [
        APIRoute(
            route.path,
            route.endpoint,
            methods=["HEAD"],
            name=route.name,
            include_in_schema=False,
            response_model=route.response_model,
            response_class=route.response_class,
            dependencies=route.dependencies,
        )
        for route in routes
        if isinstance(route, APIRoute) and route.methods == {"GET"}
    ]
    return [*routes, *twins]


async def _drain(manager: ModelManager, timeout_s: int, cut_off: CutOff) -> None:
    """Finish every accepted batch, for at most `timeout_s` (0: no limit): a session hung in
    ONNX Runtime must not keep the process alive past its grace period. Says whether every
    accepted request was answered: `cut_off` counts those the server's drain time ran out on."""
    try:
        await asyncio.wait_for(manager.close(), timeout_s or None)
    except TimeoutError:
        logger.error("shut down after %d s with batches still running (hung sessions?)", timeout_s)
        return
    if cut_off.count:
        logger.error(
            "shut down: %d request(s) still running after %d s were answered 503 "
            "(CONVSERVE_SHUTDOWN_TIMEOUT_S)",
            cut_off.count,
            timeout_s,
        )
        return
    logger.info("shut down: every accepted request answered")


async def _initial_load(manager: ModelManager) -> None:
    try:
        await manager.sync()  # reports each version's failure itself
    except Exception:  # noqa: BLE001 - logged here, or the task would end unseen
        logger.exception("initial load failed")
    # Everything alive now (modules, models, schemas) lives as long as the process: moved out of
    # the collector's reach, full collections no longer walk it (tail latency: docs/benchmarks.md).
    gc.collect()
    gc.freeze()
    loaded = ", ".join(f"{m} {manager.versions(m)}" for m in manager.model_names()) or "none"
    logger.info("execution provider: %s; models loaded: %s", manager.provider, loaded)
    for _, message in manager.errors.values():  # scan problems: logged by the manager
        logger.warning("not served: %s", message)
    default = manager.settings.default_model
    if default and default not in manager.model_names():
        logger.warning(
            "CONVSERVE_DEFAULT_MODEL %r is not loaded: POST /v1/classify answers 404 until it is",
            default,
        )
    if manager.is_ready():
        logger.info("ready")
    elif not manager.configured_models():
        logger.warning("not ready: no model found in %s", manager.root)
    else:
        logger.warning("not ready: missing %s", ", ".join(manager.missing_models()))
