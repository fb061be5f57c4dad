"""service/app.py: every route answers from the app's own route list, and FastAPI's native
OpenTelemetry records requests only with CONVSERVE_OPENTELEMETRY. A real server on loopback and
the OpenTelemetry SDK's in-memory exporter as the process's tracer provider."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service.app import ROUTERS
from service.settings import Settings
from tests.service.server import threaded_server
from tests.service.tiny_model import random_png


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    """The process's tracer provider, set once (OpenTelemetry allows one per process): the
    apps of other tests leave telemetry off and never ask for it."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return exporter


@pytest.mark.parametrize("on", [False, True])
def test_requests_are_traced_only_when_asked(
    tiny_repo: Path, spans: InMemorySpanExporter, on: bool
) -> None:
    settings = Settings(model_repository=tiny_repo, models="tiny-cnn", opentelemetry=on)
    with threaded_server(settings) as url:
        spans.clear()
        body = random_png(3, (16, 16), mode="L")
        answer = httpx.post(
            f"{url}/v1/models/tiny-cnn/classify",
            content=body,
            headers={"Content-Type": "image/png"},
        )
        assert answer.status_code == 200
        routes = [span.attributes.get("http.route") for span in spans.get_finished_spans()]
    if on:
        assert "/v1/models/{model}/classify" in routes
    else:
        assert routes == []


def test_every_route_of_every_router_is_served(tiny_repo: Path) -> None:
    """Routes are added to the app one by one, not as included routers: none may be lost."""
    settings = Settings(model_repository=tiny_repo, models="tiny-cnn")
    with threaded_server(settings) as url:
        schema = httpx.get(f"{url}/openapi.json").json()
    documented = {(path, method.upper()) for path, ops in schema["paths"].items() for method in ops}
    declared = {
        (route.path, method)
        for router in ROUTERS
        for route in router.routes
        if getattr(route, "include_in_schema", False)
        for method in getattr(route, "methods", ())
    }
    assert declared
    assert declared <= documented
