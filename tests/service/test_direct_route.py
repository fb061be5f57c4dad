"""DirectRoute: endpoints called as they are, and only those FastAPI would have nothing to solve."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from service.api import classify
from service.api.direct import DirectLane, DirectRoute
from service.api.errors import install_error_handlers
from service.errors import ModelNotFound


def test_the_classify_routes_are_direct() -> None:
    """Their answers, errors and /openapi.json entries are tested over HTTP in test_api.py."""
    paths = {r.path for r in classify.router.routes if isinstance(r, DirectRoute)}
    assert paths == {
        "/v1/models/{model}/classify",
        "/v1/models/{model}/versions/{version}/classify",
        "/v1/classify",
    }


@pytest.mark.parametrize("kind", ["query", "dependency", "no_request"])
def test_refuses_endpoints_with_anything_to_solve(kind: str) -> None:
    router = APIRouter(route_class=DirectRoute)

    async def query(request: Request, top_k: int = 5) -> Response:
        return Response()

    async def dependency(request: Request, value: int = Depends(lambda: 1)) -> Response:
        return Response()

    async def no_request() -> Response:
        return Response()

    endpoint = {"query": query, "dependency": dependency, "no_request": no_request}[kind]
    with pytest.raises(TypeError, match="takes only the Request"):
        router.add_api_route("/x", endpoint, methods=["POST"])


class Recorder:
    """ASGI middleware inside the lane: records the paths that got past it to the router."""

    def __init__(self, app: ASGIApp, reached: list[str]) -> None:
        self.app = app
        self.reached = reached

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.reached.append(scope["path"])
        await self.app(scope, receive, send)


def lane_app() -> tuple[FastAPI, list[str]]:
    """An app whose one DirectRoute answers, fails with a handled error or crashes (by query),
    with the lane in front of a recorder of what reaches the router."""
    router = APIRouter(route_class=DirectRoute)
    reached: list[str] = []

    async def echo(request: Request) -> Response:
        kind = request.query_params.get("kind")
        if kind == "handled":
            raise ModelNotFound("no such model")
        if kind == "bug":
            raise RuntimeError("a bug")
        return JSONResponse({"name": request.path_params["name"]})

    router.add_api_route("/x/{name}", echo, methods=["POST"])
    app = FastAPI()
    app.include_router(router)
    install_error_handlers(app)
    app.add_middleware(Recorder, reached=reached)  # added first: innermost
    app.add_middleware(DirectLane, routes=[r for r in router.routes if isinstance(r, DirectRoute)])
    return app, reached


def requests(app: FastAPI, *calls: tuple[str, str]) -> list[httpx.Response]:
    """(method, path) calls in order, over ASGI; an app exception is the 500 it answers."""

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [await client.request(method, path) for method, path in calls]

    return asyncio.run(run())


def test_lane_answers_direct_routes_and_passes_on_the_rest() -> None:
    app, reached = lane_app()
    (answered,) = requests(app, ("POST", "/x/a"))
    assert answered.json() == {"name": "a"}
    assert reached == []
    wrong_method, no_route = requests(app, ("GET", "/x/a"), ("POST", "/y"))
    assert wrong_method.status_code == 405  # not a POST: the router's answer
    assert no_route.status_code == 404  # no route: the router's answer
    assert reached == ["/x/a", "/y"]


def test_lane_answers_errors_through_the_apps_handlers() -> None:
    app, reached = lane_app()
    handled, bug = requests(app, ("POST", "/x/a?kind=handled"), ("POST", "/x/a?kind=bug"))
    assert handled.status_code == 404
    assert handled.json()["error"]["code"] == "model_not_found"
    assert bug.status_code == 500  # no handler: raised on, to the outer layers
    assert reached == []
