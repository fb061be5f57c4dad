"""Error answers (service/api/errors.py): one body shape per protocol, chosen by path, for every
kind of error, whether a route, the router or the edge middleware meets it. Over ASGI, through
the exception handlers and the edge middleware as `create_app` installs them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request
from prometheus_client import generate_latest

from service.api.edge import EdgeMiddleware
from service.api.errors import install_error_handlers
from service.errors import ModelNotFound, Overloaded, Unauthorized
from service.metrics import Metrics
from tests.service.server import metric_value

MAX_BODY = 16
PREFIXES = ["/v1", "/v2"]


def build_app() -> FastAPI:
    app = FastAPI()
    app.state.metrics = Metrics(gpu=False)
    for prefix in PREFIXES:
        router = APIRouter(prefix=prefix)

        @router.get("/missing")
        async def missing() -> None:
            raise ModelNotFound("model 'nope' is not loaded")

        @router.post("/busy")
        async def busy() -> None:
            raise Overloaded("queue full")

        @router.get("/locked")
        async def locked() -> None:
            raise Unauthorized("the API key is required")

        @router.get("/count")
        async def count(n: int) -> dict[str, int]:
            return {"n": n}

        @router.post("/echo")
        async def echo(request: Request) -> dict[str, int]:
            return {"bytes": len(await request.body())}

        @router.get("/bug")
        async def bug() -> None:
            raise RuntimeError("secret detail")

        app.include_router(router)
    install_error_handlers(app)
    app.add_middleware(
        EdgeMiddleware,
        max_body_bytes=MAX_BODY,
        max_body_memory_bytes=4 * MAX_BODY,
        body_timeout_s=5,
        max_inflight_requests=4,
    )
    return app


async def _chunks(total: int) -> AsyncIterator[bytes]:
    for _ in range(total // 4):
        yield b"abcd"


def call(app: FastAPI, method: str, path: str, **kwargs: object) -> httpx.Response:
    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.request(method, path, **kwargs)  # type: ignore[arg-type]

    return asyncio.run(run())


def check(response: httpx.Response, prefix: str, status: int, code: str, message: str) -> None:
    """The body of `prefix`'s protocol, never a traceback, and the edge's headers."""
    assert response.status_code == status, response.text
    if prefix == "/v2":
        assert response.json() == {"error": message}
    else:
        assert response.json() == {"error": {"code": code, "message": message}}
    assert "Traceback" not in response.text
    assert response.headers["x-content-type-options"] == "nosniff"


def failures(app: FastAPI, reason: str) -> float:
    text = generate_latest(app.state.metrics.registry).decode()
    return metric_value(text, "convserve_failures_total", reason=reason)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_service_errors_answer_their_status_code_and_headers(prefix: str) -> None:
    app = build_app()
    missing = call(app, "GET", prefix + "/missing")
    check(missing, prefix, 404, "model_not_found", "model 'nope' is not loaded")
    busy = call(app, "POST", prefix + "/busy")
    check(busy, prefix, 503, "queue_full", "queue full")
    assert busy.headers["retry-after"] == "1"
    locked = call(app, "GET", prefix + "/locked")
    check(locked, prefix, 401, "unauthorized", "the API key is required")
    assert locked.headers["www-authenticate"] == 'Bearer realm="convserve"'
    assert failures(app, "model_not_found") == failures(app, "queue_full") == 1


@pytest.mark.parametrize("prefix", PREFIXES)
def test_validation_errors_are_422_invalid_request(prefix: str) -> None:
    app = build_app()
    response = call(app, "GET", prefix + "/count", params={"n": "many"})
    message = "query.n: Input should be a valid integer, unable to parse string as an integer"
    check(response, prefix, 422, "invalid_request", message)
    assert failures(app, "invalid_request") == 1


@pytest.mark.parametrize("prefix", PREFIXES)
def test_unknown_routes_and_methods_are_404_and_405(prefix: str) -> None:
    app = build_app()
    check(call(app, "GET", prefix + "/nothing"), prefix, 404, "not_found", "Not Found")
    wrong_method = call(app, "POST", prefix + "/missing")
    check(wrong_method, prefix, 405, "method_not_allowed", "Method Not Allowed")
    assert wrong_method.headers["allow"] == "GET"  # RFC 9110: a 405 lists the allowed methods
    assert failures(app, "not_found") == failures(app, "method_not_allowed") == 1


@pytest.mark.parametrize("prefix", PREFIXES)
def test_a_bug_answers_500_without_its_detail(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = build_app()
    response = call(app, "GET", prefix + "/bug")
    check(response, prefix, 500, "internal", "internal server error")
    assert "secret detail" not in response.text
    assert failures(app, "internal") == 1
    logged = [r for r in caplog.records if r.getMessage() == f"unhandled error on GET {prefix}/bug"]
    assert len(logged) == 1
    assert logged[0].exc_info is not None  # the traceback goes to the log only


@pytest.mark.parametrize("prefix", PREFIXES)
def test_bodies_past_the_limit_are_413(prefix: str) -> None:
    app = build_app()
    assert call(app, "POST", prefix + "/echo", content=b"x" * MAX_BODY).json() == {
        "bytes": MAX_BODY
    }
    declared = call(app, "POST", prefix + "/echo", content=b"x" * (MAX_BODY + 1))
    message = f"request body of {MAX_BODY + 1} bytes exceeds {MAX_BODY}"
    check(declared, prefix, 413, "payload_too_large", message)
    streamed = call(app, "POST", prefix + "/echo", content=_chunks(4 * MAX_BODY))
    message = f"request body exceeds {MAX_BODY} bytes"
    check(streamed, prefix, 413, "payload_too_large", message)
    assert failures(app, "payload_too_large") == 2
