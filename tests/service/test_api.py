"""The native HTTP API over real uvicorn (in a thread), real HTTP, real ORT sessions."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from service.preprocess import preprocess
from service.settings import Settings
from tests.service.fakes import gate_every_runtime
from tests.service.server import metric_value, threaded_server
from tests.service.tiny_model import TinyModel, random_png, write_tiny_model

MAX_BODY = 300_000


@pytest.fixture(scope="module")
def base_url(tiny_repo: Path) -> Iterator[str]:
    settings = Settings(
        model_repository=tiny_repo,
        default_model="tiny-cnn",
        max_body_bytes=MAX_BODY,
        max_queue_size=4,
        max_images_per_request=8,
        providers="cpu",
        # One ORT instance: the gated-runtime tests hold it busy to make a queue.
        instances=1,
    )
    with threaded_server(settings) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30) as c:
        yield c


def offline_logits(model: TinyModel, image: bytes) -> np.ndarray:
    session = ort.InferenceSession(
        str(model.path / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    tensor = preprocess(image, model.metadata, max_pixels=10**7)[None]
    return np.asarray(session.run(["logits"], {"input": tensor})[0][0])


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert "Traceback" not in response.text


def test_health(client: httpx.Client) -> None:
    assert client.get("/health/live").json() == {"status": "ok"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["provider"] == "CPUExecutionProvider"
    assert ready.json()["models"] == {"tiny-cnn": [1], "tiny-rgb": [1]}
    for path in ("/health/live", "/health/ready"):
        head = client.head(path)
        assert (head.status_code, head.content) == (200, b""), path


def test_every_get_route_answers_head(client: httpx.Client) -> None:
    """HEAD gets the GET answer's status and headers, no body, on every GET route; the schema
    lists GET alone."""
    v1 = ["/metrics", "/v1/models", "/v1/models/tiny-cnn", "/v1/models/tiny-cnn/versions/1"]
    paths = [*v1, "/v2", "/v2/models/tiny-cnn", "/v2/models/tiny-cnn/config", "/openapi.json", "/"]
    for path in paths:
        get, head = client.get(path), client.head(path)
        assert (head.status_code, head.content) == (200, b""), path
        assert head.headers["content-type"] == get.headers["content-type"], path
    missing = client.head("/v1/models/nope")
    assert (missing.status_code, missing.content) == (404, b"")
    assert client.head("/v1/classify").status_code == 405  # POST only
    schema = client.get("/openapi.json").json()
    assert not [p for p, ops in schema["paths"].items() if "head" in ops]


def test_raw_png_top5_matches_offline_onnx(client: httpx.Client, tiny_cnn: TinyModel) -> None:
    image = random_png(3)
    response = client.post(
        "/v1/models/tiny-cnn/classify", content=image, headers={"content-type": "image/png"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["model"], body["version"]) == ("tiny-cnn", 1)
    (result,) = body["results"]
    predictions = result["predictions"]
    assert len(predictions) == 5
    logits = offline_logits(tiny_cnn, image)
    expected = np.argsort(-logits, kind="stable")[:5]
    assert [p["index"] for p in predictions] == list(expected)
    assert [p["label"] for p in predictions] == [f"class-{i}" for i in expected]
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose([p["probability"] for p in predictions], probs[expected], rtol=1e-4)
    assert set(body["timing_ms"]) == {"decode", "queue", "compute"}


def test_default_and_versioned_routes(client: httpx.Client) -> None:
    image = random_png(4)
    headers = {"content-type": "image/png"}
    a = client.post("/v1/classify", content=image, headers=headers).json()
    b = client.post("/v1/models/tiny-cnn/versions/1/classify", content=image, headers=headers)
    assert a["results"] == b.json()["results"]
    assert a["model"] == "tiny-cnn"


def test_multipart_many_files_in_order(client: httpx.Client) -> None:
    images = [random_png(s, mode="L" if s % 2 else "RGB") for s in range(10, 14)]
    files = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
    response = client.post("/v1/models/tiny-cnn/classify", files=files, params={"top_k": 10})
    assert response.status_code == 200, response.text
    together = [r["predictions"] for r in response.json()["results"]]
    alone = [
        client.post(
            "/v1/models/tiny-cnn/classify",
            content=data,
            headers={"content-type": "image/png"},
            params={"top_k": 10},
        ).json()["results"][0]["predictions"]
        for data in images
    ]
    assert len(together) == len(images)
    for mine, single in zip(together, alone, strict=True):
        assert [p["index"] for p in mine] == [p["index"] for p in single]
        np.testing.assert_allclose(
            [p["probability"] for p in mine], [p["probability"] for p in single], rtol=1e-4
        )


def test_json_base64(client: httpx.Client) -> None:
    images = [random_png(20), random_png(21)]
    body = {"images": [base64.b64encode(i).decode() for i in images]}
    response = client.post("/v1/classify", json=body, params={"top_k": 2})
    assert response.status_code == 200
    assert [len(r["predictions"]) for r in response.json()["results"]] == [2, 2]
    # As clients write it: wrapped lines (base64, MIME), a data URL, no padding.
    encoded = base64.b64encode(images[0]).decode()
    for written in (
        base64.encodebytes(images[0]).decode(),
        f"data:image/png;base64,{encoded}",
        encoded.rstrip("="),
    ):
        same = client.post("/v1/classify", json={"images": [written]}, params={"top_k": 2})
        assert same.status_code == 200, same.text
        assert same.json()["results"][0] == response.json()["results"][0]
    assert_error(client.post("/v1/classify", json={"images": ["***"]}), 400, "invalid_image")
    assert_error(client.post("/v1/classify", json={"pictures": []}), 422, "invalid_request")


def test_feature_maps_png_and_float16(client: httpx.Client, tiny_cnn: TinyModel) -> None:
    shapes = {fm.layer: fm.shape for fm in tiny_cnn.metadata.feature_maps}
    png = client.post(
        "/v1/classify",
        content=random_png(5),
        headers={"content-type": "image/png"},
        params={"feature_maps": "all", "channels": 3},
    ).json()["results"][0]["feature_maps"]
    assert [m["layer"] for m in png] == list(shapes)
    for entry in png:
        channels, height, width = shapes[entry["layer"]]
        assert tuple(entry["shape"]) == (channels, height, width)
        assert len(entry["channels"]) == min(3, channels)
        rows, cols = entry["grid"]
        sheet = Image.open(io.BytesIO(base64.b64decode(entry["data"])))
        assert sheet.size == (cols * width + cols - 1, rows * height + rows - 1)
        assert entry["min"] <= entry["max"]
    raw = client.post(
        "/v1/classify",
        content=random_png(5),
        headers={"content-type": "image/png"},
        params={"feature_maps": "features.conv2", "map_format": "float16"},
    ).json()["results"][0]["feature_maps"]
    (entry,) = raw
    channels, height, width = shapes["features.conv2"]
    values = np.frombuffer(base64.b64decode(entry["data"]), dtype="<f2")
    assert values.reshape(len(entry["channels"]), height, width).shape[0] == channels
    assert float(values.min()) == pytest.approx(entry["min"], abs=1e-2)


def test_cam(client: httpx.Client) -> None:
    response = client.post(
        "/v1/classify",
        content=random_png(6),
        headers={"content-type": "image/png"},
        params={"cam": "true"},
    )
    body = response.json()["results"][0]
    assert body["cam"]["index"] == body["predictions"][0]["index"]
    assert Image.open(io.BytesIO(base64.b64decode(body["cam"]["data"]))).size == (16, 16)
    no_cam = client.post(
        "/v1/models/tiny-rgb/classify",
        content=random_png(6),
        headers={"content-type": "image/png"},
        params={"cam": "true"},
    )
    assert_error(no_cam, 400, "cam_unavailable")


def test_maps_and_cam_of_a_model_that_has_none_say_so(tmp_path: Path) -> None:
    """A version whose metadata lists no feature maps and no cam entry (the graph still has the
    outputs: the metadata is what the service goes by)."""
    bare = write_tiny_model(tmp_path / "models", "bare", color_mode="RGB", gap_head=True)
    metadata = json.loads((bare.path / "metadata.json").read_text())
    metadata.update(feature_maps=[], cam=None)
    (bare.path / "metadata.json").write_text(json.dumps(metadata))
    settings = Settings(model_repository=tmp_path / "models", default_model="bare", providers="cpu")
    with threaded_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/v1/models/bare").json()["feature_maps"] == []

        def classify(params: dict[str, str]) -> httpx.Response:
            return client.post(
                "/v1/classify",
                content=random_png(7),
                headers={"content-type": "image/png"},
                params=params,
            )

        assert classify({}).status_code == 200
        assert classify({"feature_maps": ""}).status_code == 200
        for layers in ("all", "features.conv1", "conv1,pool1"):
            response = classify({"feature_maps": layers})
            assert_error(response, 400, "invalid_option")
            message = response.json()["error"]["message"]
            assert message.startswith("bare/1 exports no feature maps")
            assert f"feature_maps={layers} " in message
        no_cam = classify({"cam": "true"})
        assert_error(no_cam, 400, "cam_unavailable")
        assert "metadata.json has no cam entry" in no_cam.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "params", "content_type", "data", "status", "code"),
    [
        ("/v1/models/nope/classify", {}, "image/png", b"x", 404, "model_not_found"),
        (
            "/v1/models/tiny-cnn/versions/9/classify",
            {},
            "image/png",
            b"x",
            404,
            "version_not_found",
        ),
        ("/v1/classify", {"feature_maps": "nope"}, "image/png", b"x", 404, "layer_not_found"),
        ("/v1/classify", {"top_k": 0}, "image/png", b"x", 422, "invalid_request"),
        ("/v1/classify", {"map_format": "jpeg"}, "image/png", b"x", 422, "invalid_request"),
        ("/v1/classify", {}, "text/plain", b"x", 415, "unsupported_media_type"),
        ("/v1/classify", {}, "image/png", b"not an image", 400, "invalid_image"),
        ("/v1/classify", {}, "image/png", b"", 400, "invalid_image"),
        ("/v1/classify", {}, "image/png", b"x" * (MAX_BODY + 1), 413, "payload_too_large"),
    ],
)
def test_client_errors(
    client: httpx.Client,
    path: str,
    params: dict[str, object],
    content_type: str,
    data: bytes,
    status: int,
    code: str,
) -> None:
    response = client.post(
        path, content=data, params=params, headers={"content-type": content_type}
    )
    assert_error(response, status, code)


@pytest.mark.parametrize("content_type", [None, "application/x-www-form-urlencoded"])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_untyped_image_is_recognised_by_its_bytes(
    client: httpx.Client, content_type: str | None, fmt: str
) -> None:
    """`curl --data-binary @photo.jpg` sends curl's form type: the image is still classified,
    as it is under its own type; a body that is no image stays 415."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(random_png(7))).save(buffer, format=fmt)
    image = buffer.getvalue()
    headers = {} if content_type is None else {"content-type": content_type}
    untyped = client.post("/v1/classify", content=image, headers=headers)
    typed = client.post(
        "/v1/classify", content=image, headers={"content-type": f"image/{fmt.lower()}"}
    )
    assert untyped.status_code == 200, untyped.text
    assert untyped.json()["results"] == typed.json()["results"]
    refused = client.post("/v1/classify", content=b"a=1&b=2", headers=headers)
    assert_error(refused, 415, "unsupported_media_type")


def test_streamed_body_over_limit_is_413(client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: checked while streaming
        for _ in range(10):
            yield b"x" * (MAX_BODY // 5)

    response = client.post("/v1/classify", content=chunks(), headers={"content-type": "image/png"})
    assert_error(response, 413, "payload_too_large")


def test_multipart_without_file_part(client: httpx.Client) -> None:
    response = client.post("/v1/classify", data={"other": "1"}, files={"image": ("a", b"b")})
    assert_error(response, 400, "bad_request")
    assert (
        "(its parts: 'other', 'image'): send each image as a file part named 'file'"
        in (response.json()["error"]["message"])
    )


@pytest.mark.parametrize("body", ["multipart", "json"])
def test_too_many_images_is_the_same_400_for_every_body(client: httpx.Client, body: str) -> None:
    images = [random_png(i) for i in range(9)]  # max_images_per_request=8
    if body == "multipart":
        files = [("file", (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]
        response = client.post("/v1/classify", files=files)
    else:
        encoded = [base64.b64encode(data).decode() for data in images]
        response = client.post("/v1/classify", json={"images": encoded})
    assert_error(response, 400, "invalid_option")
    assert "at most 8 per request" in response.json()["error"]["message"]


def test_more_images_than_the_queue_holds_is_a_400(client: httpx.Client) -> None:
    """A full queue is a 503 worth retrying (test_v2_api, tests/e2e); a request larger than
    the whole queue never fits, so it is a 400 that names the limit, not a 503 forever."""
    files = [("file", (f"{i}.png", random_png(i), "image/png")) for i in range(6)]
    response = client.post("/v1/classify", files=files)  # 6 images > max_queue_size 4
    assert_error(response, 400, "invalid_option")
    assert "CONVSERVE_MAX_QUEUE_SIZE" in response.json()["error"]["message"]
    assert "retry-after" not in response.headers


def test_deadline_before_compute_is_504(client: httpx.Client) -> None:
    response = client.post(
        "/v1/classify",
        content=random_png(7),
        headers={"content-type": "image/png", "X-Request-Timeout-Ms": "0.001"},
    )
    assert_error(response, 504, "deadline_exceeded")


def test_unexpected_error_is_a_counted_500_without_traceback(
    client: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr("service.classify.build_result", boom)
    response = client.post(
        "/v1/classify", content=random_png(8), headers={"content-type": "image/png"}
    )
    assert_error(response, 500, "internal")
    assert "secret" not in response.text
    metrics = client.get("/metrics").text
    assert metric_value(metrics, "convserve_failures_total", reason="internal") >= 1


def test_models_routes(client: httpx.Client, tiny_cnn: TinyModel) -> None:
    listing = client.get("/v1/models").json()["models"]
    assert {m["name"]: m["versions"] for m in listing} == {"tiny-cnn": [1], "tiny-rgb": [1]}
    detail = client.get("/v1/models/tiny-cnn").json()
    assert detail["labels"] == tiny_cnn.metadata.labels
    assert detail["input"]["shape"] == [1, 16, 16]
    assert [(f["layer"], f["shape"]) for f in detail["feature_maps"]] == [
        (fm.layer, list(fm.shape)) for fm in tiny_cnn.metadata.feature_maps
    ]
    assert detail["cam"] is True
    assert detail["versions"] == [1]
    assert detail["source"]["kind"] == "training"  # the tiny models record no source
    image = client.get("/v1/models/tiny-cnn/filters/features.conv1")
    assert image.headers["content-type"] == "image/png"
    assert image.content == (tiny_cnn.path / "filters" / "features.conv1.png").read_bytes()
    short = client.get("/v1/models/tiny-cnn/filters/conv1")  # as feature_maps=conv1 names it
    assert short.content == image.content
    assert_error(client.get("/v1/models/tiny-cnn/filters/nope"), 404, "layer_not_found")
    assert_error(client.get("/v1/models/nope"), 404, "model_not_found")
    assert client.get("/v1/models/tiny-cnn/versions/1").json() == detail
    assert_error(client.get("/v1/models/tiny-cnn/versions/7"), 404, "version_not_found")
    for odd in ("+1", "%201", "1.0", "0", "x"):  # read as the classify route reads it
        assert_error(client.get(f"/v1/models/tiny-cnn/versions/{odd}"), 422, "invalid_request")
        posted = client.post(
            f"/v1/models/tiny-cnn/versions/{odd}/classify",
            content=random_png(1),
            headers={"content-type": "image/png"},
        )
        assert_error(posted, 422, "invalid_request")


def test_model_detail_shows_the_weights_source(tmp_path: Path) -> None:
    """`source` as metadata.json records it; a version that records none is a training run's.
    The v2 model metadata, whose shape the protocol fixes, gains nothing."""
    repo = tmp_path / "models"
    write_tiny_model(repo, "made", version=1)
    imported = write_tiny_model(repo, "made", version=2, seed=1)
    recorded = {"kind": "onnx", "name": None, "file": "made.onnx", "sha256": "ab" * 32}
    metadata = json.loads((imported.path / "metadata.json").read_text())
    metadata["source"] = {k: v for k, v in recorded.items() if v is not None}
    (imported.path / "metadata.json").write_text(json.dumps(metadata))
    settings = Settings(model_repository=repo, default_model="made", providers="cpu")
    with threaded_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        newest = client.get("/v1/models/made").json()
        assert (newest["version"], newest["source"]) == (2, recorded)
        assert client.get("/v1/models/made/versions/2").json() == newest
        trained = client.get("/v1/models/made/versions/1").json()["source"]
        assert trained == {"kind": "training", "name": None, "file": None, "sha256": None}
        spec = client.get("/openapi.json").json()
        detail_schema = spec["components"]["schemas"]["ModelDetail"]
        assert "source" in detail_schema["required"]
        for path in ("/v2/models/made", "/v2/models/made/versions/1"):
            v2 = client.get(path).json()
            assert set(v2) == {"name", "versions", "platform", "inputs", "outputs"}
            assert "source" not in json.dumps(v2)


def test_root_docs_and_openapi(client: httpx.Client) -> None:
    root = client.get("/", follow_redirects=False)
    assert root.status_code == 200
    assert root.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in root.headers["content-security-policy"]
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/v1/models/{model}/classify"]["post"]["requestBody"]["content"]
    assert {"image/png", "multipart/form-data", "application/json"} <= set(body)
    assert body["application/json"]["schema"]["properties"]["images"]["type"] == "array"
    assert "#/components" not in str(body)  # no dangling reference
    assert "application/octet-stream" in body
    infer = spec["paths"]["/v2/models/{model}/infer"]["post"]
    assert {"application/json", "application/octet-stream"} <= set(infer["requestBody"]["content"])
    assert {"400", "404", "503"} <= set(infer["responses"])
    assert "404" in spec["paths"]["/v1/models/{model}"]["get"]["responses"]
    assert "503" in spec["paths"]["/v2/health/ready"]["get"]["responses"]
    assert_error(client.get("/no/such/route"), 404, "not_found")
    # a stray slash is not redirected to a URL made of the client's Host header
    stray = client.get("/v1/models/", headers={"host": "evil.example"}, follow_redirects=False)
    assert_error(stray, 404, "not_found")
    assert "location" not in stray.headers


def test_metrics_exposition(client: httpx.Client) -> None:
    client.post("/v1/classify", content=random_png(9), headers={"content-type": "image/png"})
    client.post("/v1/models/nope/classify", content=b"x", headers={"content-type": "image/png"})
    text = client.get("/metrics").text
    for name in [
        "convserve_requests_total",
        "convserve_request_duration_seconds_bucket",
        "convserve_preprocess_duration_seconds_bucket",
        "convserve_queue_duration_seconds_bucket",
        "convserve_compute_duration_seconds_bucket",
        "convserve_batch_size_bucket",
        "convserve_queue_depth",
        "convserve_failures_total",
        "convserve_model_ready",
    ]:
        assert name in text, name
    assert (
        metric_value(
            text, "convserve_requests_total", route="/v1/classify", model="tiny-cnn", code="200"
        )
        >= 1
    )
    # A made-up model name is counted without its name: clients cannot mint series.
    assert metric_value(text, "convserve_failures_total", model="", reason="model_not_found") >= 1
    assert 'model="nope"' not in text
    assert (
        metric_value(
            text,
            "convserve_model_ready",
            model="tiny-cnn",
            version="1",
            provider="CPUExecutionProvider",
        )
        == 1
    )
    assert "convserve_gpu_" not in text  # absent without a GPU, not zeros
    assert 'route="/v1/models/nope/classify"' not in text  # route templates, not raw paths


def test_plain_routes_are_labelled_and_unknown_paths_are_not(client: httpx.Client) -> None:
    """/openapi.json (a route FastAPI adds) under its path; a path nothing serves under
    "unmatched", a missing static file under its route's template: clients cannot mint series
    with made-up paths."""
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/no/such/page-123").status_code == 404
    assert client.get("/static/no-such-file-123.js").status_code == 404
    text = client.get("/metrics").text
    assert metric_value(text, "convserve_requests_total", route="/openapi.json", code="200") >= 1
    assert metric_value(text, "convserve_requests_total", route="unmatched", code="404") >= 1
    static = metric_value(text, "convserve_requests_total", route="/static/{name:path}", code="404")
    assert static >= 1
    assert "no-such" not in text


def test_api_key(tiny_repo: Path) -> None:
    settings = Settings(model_repository=tiny_repo, default_model="tiny-cnn", api_key="s3cret")
    with threaded_server(settings) as url, httpx.Client(base_url=url) as c:
        headers = {"content-type": "image/png"}
        image = random_png(1)
        assert_error(c.post("/v1/classify", content=image, headers=headers), 401, "unauthorized")
        wrong = {**headers, "X-API-Key": "nope"}
        assert_error(c.post("/v1/classify", content=image, headers=wrong), 403, "forbidden")
        bearer = {**headers, "Authorization": "Bearer s3cret"}
        assert c.post("/v1/classify", content=image, headers=bearer).status_code == 200
        assert c.get("/health/ready").status_code == 200  # health stays open


def test_not_ready_until_configured_models_load(tiny_repo: Path) -> None:
    settings = Settings(model_repository=tiny_repo, models="tiny-cnn,missing-model")
    with threaded_server(settings, ready=False) as url, httpx.Client(base_url=url) as c:
        for _ in range(600):
            body = c.get("/health/ready")
            if body.json()["status"] != "loading":
                break
            time.sleep(0.05)
        assert body.status_code == 503
        assert body.headers["retry-after"] == "1"
        assert body.json()["missing"] == ["missing-model"]
        v2 = c.get("/v2/health/ready")
        assert (v2.status_code, v2.headers["retry-after"], v2.json()) == (
            503,
            "1",
            {"ready": False},
        )
        assert c.head("/v2/health/ready").status_code == 503
        assert c.get("/health/live").status_code == 200
        for path in ("/v2/health/live", "/v2/models/tiny-cnn/ready"):  # probes may use HEAD
            assert c.head(path).status_code == 200, path


def test_disconnected_client_is_dropped_before_compute(
    client: httpx.Client, base_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A holds the only ORT instance; B is queued, hangs up, and is never computed."""
    import socket
    import threading

    gated = gate_every_runtime(monkeypatch)
    gated.hold()

    def metric(name: str, **labels: str) -> float:
        return metric_value(client.get("/metrics").text, name, **labels)

    def wait_until(check: object) -> None:
        for _ in range(400):
            if check():  # type: ignore[operator]
                return
            time.sleep(0.025)
        raise TimeoutError

    path = "/v1/models/tiny-rgb/classify"
    decoded = metric("convserve_preprocess_duration_seconds_count", model="tiny-rgb")
    first = threading.Thread(
        target=client.post,
        args=(path,),
        kwargs={"content": random_png(40), "headers": {"content-type": "image/png"}},
    )
    first.start()
    assert gated.started.wait(20)
    image = random_png(41)
    host, port = base_url.removeprefix("http://").split(":")
    hang_up = socket.create_connection((host, int(port)))
    hang_up.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        f"Content-Length: {len(image)}\r\n\r\n".encode()
        + image
    )
    wait_until(
        lambda: (
            metric("convserve_preprocess_duration_seconds_count", model="tiny-rgb") >= decoded + 2
        )
    )  # B decoded and queued behind A
    hang_up.close()
    wait_until(lambda: metric("convserve_requests_total", model="tiny-rgb", code="499") >= 1)
    gated.gate.set()
    first.join(20)
    # C is batched after the batcher has dropped B: B's failure is counted once, not again there.
    after = client.post(path, content=random_png(42), headers={"content-type": "image/png"})
    assert after.status_code == 200
    assert gated.sizes == [1, 1]  # B never reached session.run
    assert metric("convserve_failures_total", model="tiny-rgb", reason="client_disconnected") == 1


@pytest.mark.parametrize("value", ["abc", "-5", "0", "nan", "inf", "", "1_000"])
def test_bad_timeout_header_is_one_422(client: httpx.Client, value: str) -> None:
    """Not a number, or a number <= 0: the same answer as a bad query parameter gets."""
    response = client.post(
        "/v1/classify",
        content=random_png(3),
        headers={"content-type": "image/png", "X-Request-Timeout-Ms": value},
    )
    assert_error(response, 422, "invalid_request")
    assert "X-Request-Timeout-Ms" in response.json()["error"]["message"]


def test_the_page_revalidates_with_its_etag(client: httpx.Client) -> None:
    """no-cache: each load asks again, and a current copy costs a 304 without the body."""
    for path in ("/", "/static/js/main.js"):
        first = client.get(path)
        assert first.status_code == 200
        assert first.headers["cache-control"] == "no-cache"
        etag = first.headers["etag"]
        again = client.get(path, headers={"If-None-Match": etag})
        assert again.status_code == 304
        assert again.content == b""
        assert again.headers["etag"] == etag
        assert "default-src 'self'" in again.headers["content-security-policy"]
        assert client.get(path, headers={"If-None-Match": '"other"'}).status_code == 200
