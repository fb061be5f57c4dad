"""The edge middleware (service/api/edge.py) on every route: the body limit, the body timeout,
security headers and CORS."""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.settings import Settings
from tests.service.server import metric_value, threaded_server
from tests.service.tiny_model import random_png

LIMIT = 64 * 1024
PNG = {"content-type": "image/png"}


@pytest.fixture(scope="module")
def base_url(tiny_repo: Path) -> Iterator[str]:
    settings = Settings(
        model_repository=tiny_repo, default_model="tiny-cnn", providers="cpu", max_body_bytes=LIMIT
    )
    with threaded_server(settings) as url:
        yield url


def _raw_request(base_url: str, head: str, body: bytes = b"") -> bytes:
    """Send raw HTTP; the answer's first bytes."""
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        return sock.recv(65536)


@pytest.mark.parametrize(
    ("path", "body_start"),
    [
        ("/v1/classify", b'{"error":{"code":"payload_too_large"'),
        ("/v2/models/tiny-cnn/infer", b'{"error":"request body of'),
        ("/v2/repository/index", b'{"error":"request body of'),
        ("/health/live", b'{"error":{"code":"payload_too_large"'),
    ],
)
def test_declared_length_over_limit_is_413_before_any_body(
    base_url: str, path: str, body_start: bytes
) -> None:
    # A gigabyte is announced and never sent: the answer cannot wait for it.
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        "Content-Length: 1000000000\r\n\r\n"
    )
    answer = _raw_request(base_url, head)
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 413 Request Entity Too Large"
    assert body_start in rest
    metrics = httpx.get(base_url + "/metrics").text
    assert metric_value(metrics, "convserve_failures_total", reason="payload_too_large") > 0


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/v1/models/tiny-cnn/classify", "/v1/models/{model}/classify"),
        ("/v2/models/tiny-cnn/infer", "/v2/models/{model}/infer"),
    ],
)
def test_a_refusal_at_the_edge_is_counted_under_its_route_and_model(
    base_url: str, path: str, route: str
) -> None:
    """Answered before routing, yet labelled as the router would have: dashboards and alerts
    per model see it (not under route "unmatched", model "")."""
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n"
    labels = {"model": "tiny-cnn", "route": route, "code": "413"}
    before = metric_value(
        httpx.get(base_url + "/metrics").text, "convserve_requests_total", **labels
    )
    answer = _raw_request(base_url, head)
    assert answer.startswith(b"HTTP/1.1 413 ")
    after = metric_value(
        httpx.get(base_url + "/metrics").text, "convserve_requests_total", **labels
    )
    assert after == before + 1


@pytest.mark.parametrize("path", ["/v1/classify", "/v2/models/tiny-cnn/infer"])
def test_chunked_body_is_cut_when_it_passes_the_limit(base_url: str, path: str) -> None:
    sent = []

    def chunks() -> Iterator[bytes]:
        for _ in range(1000):  # 64 MB unless the server stops reading
            sent.append(1)
            yield b"\x00" * (LIMIT // 4)

    response = httpx.post(
        base_url + path, content=chunks(), headers={"content-type": "image/png"}, timeout=30
    )
    assert response.status_code == 413
    if path.startswith("/v2"):
        assert response.json()["error"].startswith("request body exceeds")
    else:
        assert response.json()["error"]["code"] == "payload_too_large"


def test_slow_body_is_408(tiny_repo: Path) -> None:
    settings = Settings(
        model_repository=tiny_repo, default_model="tiny-cnn", providers="cpu", body_timeout_s=0.5
    )
    head = (
        "POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        "Content-Length: 1000\r\n\r\n"
    )
    with threaded_server(settings) as url:
        # 4 of 1000 bytes, then silence: only the server's body timeout can answer it (the
        # client's socket gives up after 10 s, so a server that waits for the rest fails here).
        answer = _raw_request(url, head, b"\x89PNG")
        good = httpx.post(url + "/v1/classify", content=random_png(1), headers=PNG)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"code":"request_timeout"' in answer
    assert good.status_code == 200


def test_body_at_the_limit_is_read(base_url: str) -> None:
    response = httpx.post(
        base_url + "/v1/classify", content=b"\x00" * LIMIT, headers={"content-type": "image/png"}
    )
    assert response.status_code == 400  # read in full, then refused as an image
    assert response.json()["error"]["code"] == "invalid_image"


def test_security_headers_and_no_cors_by_default(base_url: str) -> None:
    response = httpx.get(
        base_url + "/v1/models", headers={"Origin": "https://evil.example"}, timeout=10
    )
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert "access-control-allow-origin" not in response.headers
    page = httpx.get(base_url + "/", timeout=10)
    assert "default-src 'self'" in page.headers["content-security-policy"]


def test_cors_allows_only_configured_origins(tiny_repo: Path) -> None:
    settings = Settings(
        model_repository=tiny_repo,
        default_model="tiny-cnn",
        providers="cpu",
        cors_origins="https://app.example",
    )
    with threaded_server(settings) as url:
        preflight = {"Access-Control-Request-Method": "POST"}
        allowed = httpx.options(
            url + "/v1/classify", headers={"Origin": "https://app.example", **preflight}
        )
        refused = httpx.options(
            url + "/v1/classify", headers={"Origin": "https://evil.example", **preflight}
        )
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in refused.headers


HUGE = "9" * 4301  # past the 4,300 digits Python converts to int


def test_numbers_past_the_int_conversion_limit_are_ordinary_errors(base_url: str) -> None:
    """Versions, lengths and timeouts written with thousands of digits: the answers a small bad
    value gets (never a 500, never a dropped connection), and the server goes on."""
    with httpx.Client(base_url=base_url) as client:
        assert client.get(f"/v1/models/tiny-cnn/versions/{HUGE}").status_code == 422
        for path in (
            f"/v2/models/tiny-cnn/versions/{HUGE}",
            f"/v2/models/tiny-cnn/versions/{HUGE}/ready",
        ):
            assert client.get(path).status_code == 404, path
        assert client.get("/static/a%00.png").status_code == 404
        v2_body = {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1],
                    "datatype": "BYTES",
                    "data": [base64.b64encode(random_png(5)).decode()],
                }
            ]
        }
        framed = client.post(
            "/v2/models/tiny-cnn/infer",
            content=json.dumps(v2_body).encode(),
            headers={"Inference-Header-Content-Length": HUGE},
        )
        assert framed.status_code == 400
        assert "is not a length within" in framed.json()["error"]
        no_deadline = json.dumps({**v2_body, "parameters": {"timeout": 0}}).replace(
            '"timeout": 0', f'"timeout": 1{"0" * 399}'
        )
        assert client.post("/v2/models/tiny-cnn/infer", content=no_deadline).status_code == 200
    head = f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Length: {HUGE}\r\n\r\n"
    answer = _raw_request(base_url, head)
    assert answer.startswith(b"HTTP/1.1 4"), answer[:80]  # refused with an answer
    assert httpx.get(base_url + "/health/ready").status_code == 200


@pytest.mark.parametrize("path", ["/v2/models/tiny-cnn/infer", "/v1/classify"])
def test_a_refusal_before_routing_is_counted_under_its_model(base_url: str, path: str) -> None:
    """Named in the path, or the default model's route (tiny-cnn is this server's default)."""
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n"
    before = httpx.get(base_url + "/metrics").text
    assert _raw_request(base_url, head).startswith(b"HTTP/1.1 413")
    after = httpx.get(base_url + "/metrics").text
    labels = {"model": "tiny-cnn", "reason": "payload_too_large"}
    counted = metric_value(after, "convserve_failures_total", **labels)
    assert counted == metric_value(before, "convserve_failures_total", **labels) + 1
