"""The generated bad-input corpus (tests/badinputs.py) against every classify route of a real
uvicorn server: no 5xx, every refusal in the native error body's shape, the server still live
after."""

from __future__ import annotations

import base64
from collections import Counter
from pathlib import Path

import httpx
import pytest

from service.settings import Settings
from tests.badinputs import JSON, BadInput, corpus, v2_corpus
from tests.service.server import metric_value, threaded_server
from tests.service.tiny_model import random_png

pytestmark = pytest.mark.timeout(300)
NATIVE_ROUTES = (
    "/v1/classify",
    "/v1/models/tiny-cnn/classify",
    "/v1/models/tiny-cnn/versions/1/classify",
    "/v1/models/tiny-rgb/classify",
)
V2_ROUTE = "/v2/models/tiny-rgb/infer"


def _v2_body(image: bytes) -> dict[str, object]:
    data = base64.b64encode(image).decode()
    return {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [data]}]}


def _check(case: BadInput, route: str, response: httpx.Response, seen: Counter[str]) -> None:
    where = f"{case.name} on {route}: {response.status_code} {response.text[:200]}"
    assert response.status_code < 500, where
    if response.status_code == 200:
        assert case.may_succeed, where
        return
    assert 400 <= response.status_code < 500, where
    body = response.json()
    if route.startswith("/v2"):
        assert isinstance(body["error"], str), where
        seen[f"v2:{response.status_code}"] += 1
        return
    assert set(body) == {"error"}, where
    assert set(body["error"]) == {"code", "message"}, where
    assert body["error"]["code"].isidentifier(), where
    assert body["error"]["message"], where
    seen[f"{response.status_code}:{body['error']['code']}"] += 1


def test_corpus_is_large_enough() -> None:
    assert len(corpus()) >= 200


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # the corpus's bad-EXIF JPEG
def test_bad_input_corpus_gets_4xx_on_every_classify_route(tiny_repo: Path) -> None:
    settings = Settings(model_repository=tiny_repo, default_model="tiny-cnn", providers="cpu")
    cases = corpus()
    seen: Counter[str] = Counter()
    sent = 0
    with threaded_server(settings) as base_url, httpx.Client(base_url=base_url, timeout=60) as c:
        for case in cases:
            headers = {"content-type": case.content_type} if case.content_type is not None else {}
            for route in NATIVE_ROUTES:
                _check(case, route, c.post(route, content=case.body, headers=headers), seen)
                sent += 1
            if case.raw_image is not None:
                _check(case, V2_ROUTE, c.post(V2_ROUTE, json=_v2_body(case.raw_image)), seen)
                sent += 1
        assert c.get("/health/live").status_code == 200
        good = c.post("/v1/classify", content=random_png(1), headers={"content-type": "image/png"})
        assert good.status_code == 200
        metrics = c.get("/metrics").text
    assert metric_value(metrics, "convserve_failures_total", reason="internal") == 0
    print(f"\nbad-input corpus: {len(cases)} cases, {sent} requests, answers {dict(seen)}")  # noqa: T201
    # The refusals are deliberate, not one catch-all: every family has its own code.
    for code in (
        "400:invalid_image",
        "400:image_too_large",
        "400:image_too_small",
        "400:unsupported_image",
        "415:unsupported_media_type",
        "422:invalid_request",
    ):
        assert seen[code] > 0, code


def test_bad_v2_bodies_get_4xx(tiny_repo: Path) -> None:
    settings = Settings(model_repository=tiny_repo, default_model="tiny-cnn", providers="cpu")
    seen: Counter[str] = Counter()
    with threaded_server(settings) as base_url, httpx.Client(base_url=base_url, timeout=60) as c:
        for case in v2_corpus():
            headers = {"content-type": JSON, **dict(case.headers)}
            route = "/v2/models/tiny-cnn/infer"
            _check(case, route, c.post(route, content=case.body, headers=headers), seen)
        assert c.get("/v2/health/live").status_code == 200
    assert seen["v2:413"] == 1  # the gzip bomb: inflation stops at the body limit
    print(f"\nv2 bad bodies: {len(v2_corpus())} cases, answers {dict(seen)}")  # noqa: T201


def test_unicode_digits_are_not_numbers(tiny_repo: Path, tmp_path: Path) -> None:
    """'¹'.isdigit() is True and int('¹') raises: found by schemathesis as a 500 on v2 paths."""
    from service.repository import scan

    settings = Settings(model_repository=tiny_repo, default_model="tiny-cnn", providers="cpu")
    with threaded_server(settings) as base_url, httpx.Client(base_url=base_url) as c:
        version = c.get("/v2/models/tiny-cnn/versions/%C2%B91")
        header = c.post(
            "/v2/models/tiny-cnn/infer",
            content=b"{}",
            headers={"Inference-Header-Content-Length": b"\xb9"},
        )
    assert version.status_code == 404
    assert header.status_code == 400
    (tmp_path / "m" / "\u00b9").mkdir(parents=True)
    refs, problems = scan(tmp_path)
    assert refs == []
    assert "not an integer version" in problems[0]
