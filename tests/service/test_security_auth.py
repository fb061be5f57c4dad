"""Auth on every route family, the exposed-host warning, and names that try to reach files."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from service.__main__ import warn_if_exposed
from service.settings import Settings
from tests.service.server import threaded_server
from tests.service.tiny_model import random_png

API_KEY = "inference-key"
ADMIN_KEY = "admin-key"
PNG = {"content-type": "image/png"}
INFERENCE = [
    ("POST", "/v1/classify"),
    ("POST", "/v1/models/tiny-cnn/classify"),
    ("POST", "/v1/models/tiny-cnn/versions/1/classify"),
    ("GET", "/v1/models"),
    ("GET", "/v1/models/tiny-cnn"),
    ("GET", "/v1/models/tiny-cnn/filters/features.conv1"),
    ("GET", "/v2/models/tiny-cnn"),
    ("GET", "/v2/models/tiny-cnn/config"),
]
ADMIN = [("POST", "/v2/repository/index"), ("POST", "/v2/repository/models/tiny-cnn/load")]
OPEN = ["/health/live", "/health/ready", "/metrics", "/v2/health/live", "/v2/health/ready"]


@pytest.fixture(scope="module")
def client(tiny_repo: Path) -> Iterator[httpx.Client]:
    settings = Settings(
        model_repository=tiny_repo,
        default_model="tiny-cnn",
        providers="cpu",
        api_key=API_KEY,
        admin_key=ADMIN_KEY,
    )
    with threaded_server(settings) as url, httpx.Client(base_url=url, timeout=30) as c:
        yield c


def _call(c: httpx.Client, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    if method == "POST":
        return c.post(path, content=random_png(1), headers={**PNG, **headers})
    return c.get(path, headers=headers)


@pytest.mark.parametrize(("method", "path"), INFERENCE)
def test_inference_routes_need_the_api_key(client: httpx.Client, method: str, path: str) -> None:
    missing = _call(client, method, path, {})
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == 'Bearer realm="convserve"'
    assert _call(client, method, path, {"X-API-Key": API_KEY + "x"}).status_code == 403
    assert _call(client, method, path, {"Authorization": f"Bearer {ADMIN_KEY}"}).status_code == 403
    assert _call(client, method, path, {"X-API-Key": API_KEY}).status_code == 200
    assert _call(client, method, path, {"Authorization": f"Bearer {API_KEY}"}).status_code == 200


@pytest.mark.parametrize(("method", "path"), ADMIN)
def test_admin_routes_need_the_admin_key(client: httpx.Client, method: str, path: str) -> None:
    def post(headers: dict[str, str]) -> int:
        return client.post(path, json={}, headers=headers).status_code

    assert post({}) == 401
    assert post({"X-API-Key": API_KEY}) == 403  # the inference key is not an admin key
    assert post({"Authorization": f"Bearer {ADMIN_KEY}"}) == 200


@pytest.mark.parametrize("path", OPEN)
def test_health_and_metrics_stay_open(client: httpx.Client, path: str) -> None:
    assert client.get(path).status_code == 200


def test_admin_routes_are_off_without_an_admin_key(tiny_repo: Path) -> None:
    settings = Settings(model_repository=tiny_repo, providers="cpu", models="tiny-cnn")
    with threaded_server(settings) as url:
        response = httpx.post(url + "/v2/repository/index", json={})
    assert response.status_code == 403
    assert "CONVSERVE_ADMIN_KEY" in response.json()["error"]


TRAVERSALS = [
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "..%2Ftiny-cnn",
    "%2Fetc%2Fpasswd",
    "tiny-cnn%2F..%2F..%2F..",
    "%2E%2E",
    "file:%2F%2F%2Fetc%2Fpasswd",
    "https:%2F%2Fevil.example%2Fmodel.onnx",
    "TINY-CNN",
    "tiny-cnn%00",
]


@pytest.mark.parametrize("name", TRAVERSALS)
def test_model_names_never_reach_the_filesystem(client: httpx.Client, name: str) -> None:
    key = {"X-API-Key": API_KEY}
    admin = {"X-API-Key": ADMIN_KEY}
    answers = [
        _call(client, "POST", f"/v1/models/{name}/classify", key),
        _call(client, "GET", f"/v1/models/{name}", key),
        _call(client, "GET", f"/v1/models/tiny-cnn/filters/{name}", key),
        _call(client, "GET", f"/v2/models/{name}/config", key),
        client.post(f"/v2/repository/models/{name}/load", json={}, headers=admin),
    ]
    for response in answers:
        assert response.status_code in {400, 404, 405}, (name, response.text)
        assert b"root:" not in response.content


def test_load_refuses_file_and_url_overrides(client: httpx.Client) -> None:
    body = {"parameters": {"config": '{"backend": "python"}', "file:1/model.onnx": "AAAA"}}
    response = client.post(
        "/v2/repository/models/tiny-cnn/load", json=body, headers={"X-API-Key": ADMIN_KEY}
    )
    assert response.status_code == 400


def test_exposed_host_without_key_warns_loudly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="service"):
        warn_if_exposed(Settings(host="0.0.0.0"))
        warn_if_exposed(Settings(host="127.0.0.1"))
        warn_if_exposed(Settings(host="::", api_key="k"))
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "SECURITY" in warnings[0]
    assert "0.0.0.0" in warnings[0]


def test_fault_injection_is_refused_off_loopback() -> None:
    assert Settings(fault_injection="raise:2", host="localhost").fault_injection == "raise:2"
    with pytest.raises(ValidationError, match="for tests"):
        Settings(fault_injection="raise:2", host="0.0.0.0")
    with pytest.raises(ValidationError, match="raise:N"):
        Settings(fault_injection="explode:1")
