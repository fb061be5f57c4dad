"""DirectRoute: endpoints called as they are, and only those FastAPI would have nothing to solve."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse

from service.api import classify
from service.api.direct import DirectRoute
from service.api.edge import EdgeMiddleware
from service.api.errors import install_error_handlers
from service.errors import ModelNotFound
from service.metrics import Metrics


def test_the_classify_routes_are_direct() -> None:
    """Their answers, errors and /openapi.json entries are tested over HTTP in test_api.py."""
    paths = {r.path for r in classify.router.routes if isinstance(r, DirectRoute)}
    assert paths == {
        "/v1/models/{model}/classify",
        "/v1/models/{model}/versions/{version}/classify",
        "/v1/classify",
    }


@pytest.mark.parametrize("kind", ["query", "dependency", "no_request", "router_dependency"])
def test_refuses_endpoints_with_anything_to_solve(kind: str) -> None:
    dependencies = [Depends(lambda: 1)] if kind == "router_dependency" else None
    router = APIRouter(route_class=DirectRoute, dependencies=dependencies)

    async def query(request: Request, top_k: int = 5) -> Response:
        return Response()

    async def dependency(request: Request, value: int = Depends(lambda: 1)) -> Response:
        return Response()

    async def no_request() -> Response:
        return Response()

    async def request_only(request: Request) -> Response:
        return Response()

    endpoint = {
        "query": query,
        "dependency": dependency,
        "no_request": no_request,
        "router_dependency": request_only,
    }[kind]
    with pytest.raises(TypeError, match="takes only the Request"):
        router.add_api_route("/x", endpoint, methods=["POST"])


def direct_app() -> FastAPI:
    """An app whose one DirectRoute answers, fails with a handled error or crashes (by query),
    with the exception handlers and edge middleware `create_app` installs."""
    router = APIRouter(route_class=DirectRoute)

    async def echo(request: Request) -> Response:
        kind = request.query_params.get("kind")
        if kind == "handled":
            raise ModelNotFound("no such model")
        if kind == "bug":
            raise RuntimeError("a bug")
        return JSONResponse({"name": request.path_params["name"]})

    router.add_api_route("/x/{name}", echo, methods=["POST"])
    app = FastAPI()
    app.state.metrics = Metrics(gpu=False)
    app.include_router(router)
    install_error_handlers(app)
    app.add_middleware(
        EdgeMiddleware,
        max_body_bytes=64,
        max_body_memory_bytes=256,
        body_timeout_s=5,
        max_inflight_requests=4,
    )
    return app


def requests(app: FastAPI, *calls: tuple[str, str]) -> list[httpx.Response]:
    """(method, path) calls in order, over ASGI."""

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [await client.request(method, path) for method, path in calls]

    return asyncio.run(run())


def test_the_router_calls_direct_routes_with_their_path_parameters() -> None:
    (answered, wrong_method, no_route) = requests(
        direct_app(), ("POST", "/x/a"), ("GET", "/x/a"), ("POST", "/y")
    )
    assert answered.json() == {"name": "a"}
    assert wrong_method.status_code == 405
    assert no_route.status_code == 404


def test_direct_route_errors_reach_the_apps_handlers() -> None:
    handled, bug = requests(direct_app(), ("POST", "/x/a?kind=handled"), ("POST", "/x/a?kind=bug"))
    assert handled.status_code == 404
    assert handled.json()["error"]["code"] == "model_not_found"
    assert bug.status_code == 500
    assert bug.json() == {"error": {"code": "internal", "message": "internal server error"}}
