"""ConvserveApp: HTTP requests enter the middleware stack at the edge (skipping FastAPI's and
Starlette's outer layers) only where that changes no answer."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import Request, Response
from fastapi.responses import JSONResponse

from service.api.edge import EdgeMiddleware
from service.app import ConvserveApp
from service.metrics import Metrics
from tests.service.test_direct_route import Recorder


def edge_app(outer: list[str] | None = None) -> ConvserveApp:
    app = ConvserveApp()
    app.state.metrics = Metrics(gpu=False)

    @app.post("/ok")
    async def ok(request: Request) -> Response:
        return JSONResponse({"body": len(await request.body())})

    @app.post("/bug")
    async def bug() -> Response:
        raise RuntimeError("a bug")

    app.add_middleware(EdgeMiddleware, max_body_bytes=8, body_timeout_s=5, max_inflight_requests=4)
    if outer is not None:
        app.add_middleware(Recorder, reached=outer)  # added after the edge: outside it
    return app


def post(app: ConvserveApp, *calls: tuple[str, bytes]) -> list[httpx.Response]:
    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [await client.post(path, content=body) for path, body in calls]

    return asyncio.run(run())


def check_answers(app: ConvserveApp) -> None:
    ok, too_large, bug = post(app, ("/ok", b"1234"), ("/ok", b"123456789"), ("/bug", b""))
    assert ok.json() == {"body": 4}
    assert ok.headers["x-frame-options"] == "DENY"
    assert too_large.status_code == 413
    assert bug.status_code == 500
    assert bug.json() == {"error": {"code": "internal", "message": "internal server error"}}
    assert "Traceback" not in bug.text


def test_requests_enter_at_the_edge_with_the_same_answers() -> None:
    app = edge_app()
    check_answers(app)
    assert app._enters_at_edge()


def test_a_middleware_outside_the_edge_still_sees_every_request() -> None:
    seen: list[str] = []
    app = edge_app(outer=seen)
    check_answers(app)
    assert not app._enters_at_edge()
    assert seen == ["/ok", "/ok", "/bug"]


def test_with_fastapi_telemetry_configured_requests_take_fastapis_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app = edge_app()
    calls: list[str] = []
    telemetry = app._native_telemetry
    real_call = type(telemetry).__call__

    async def recorded(self: object, **kwargs: object) -> None:
        calls.append(kwargs["scope"]["path"])  # type: ignore[index]
        await real_call(self, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(type(telemetry), "enabled", lambda self: True)
    monkeypatch.setattr(type(telemetry), "__call__", recorded)
    check_answers(app)
    assert calls == ["/ok", "/ok", "/bug"]
