"""The v2 routes on a real uvicorn with the tiny model repository, driven with httpx.

`session.run` is wrapped by a gate (real ORT behind it) so a test can hold the runtime busy and
see exactly which requests share a batch and when the queue is full.
"""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest

from service.settings import Settings
from service.v2 import infer as v2_infer
from tests.service.fakes import GatedRuntime, gate_every_runtime
from tests.service.server import metric_value, threaded_server
from tests.service.tiny_model import (
    LABELS,
    TinyModel,
    random_png,
    rewrite_model,
    write_tiny_model,
)

MODEL = "tiny-cnn"
ADMIN_KEY = "admin-secret"
API_KEY = "api-secret"
INFER = f"/v2/models/{MODEL}/infer"
MAX_QUEUE_SIZE = 3


@pytest.fixture(scope="module")
def gate() -> Iterator[GatedRuntime]:
    with pytest.MonkeyPatch.context() as patch:
        yield gate_every_runtime(patch)


@pytest.fixture(scope="module")
def base_url(tiny_repo: Path, gate: GatedRuntime) -> Iterator[str]:
    settings = Settings(
        model_repository=tiny_repo,
        providers="cpu",
        admin_key=ADMIN_KEY,
        max_queue_size=MAX_QUEUE_SIZE,
        # 0: a batch stops filling as soon as the runtime is busy, so what arrives next waits
        # in the queue (observable) until the gate opens.
        max_queue_delay_ms=0,
        # One ORT instance: the gated-runtime tests hold it busy to make a queue.
        instances=1,
        # No cap from measured compute time: a batch held at the gate would measure as slow
        # and cap the next batches at one image (the tests count batch sizes).
        max_batch_compute_ms=0,
    )
    with threaded_server(settings) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        yield client


def tensor_request(x: npt.NDArray[np.float32], **extra: Any) -> dict[str, Any]:
    tensor = {
        "name": "input",
        "shape": list(x.shape),
        "datatype": "FP32",
        "data": x.ravel().tolist(),
    }
    return {"inputs": [tensor], **extra}


def offline(tiny_cnn: TinyModel, x: npt.NDArray[np.float32], outputs: list[str]) -> list[Any]:
    session = ort.InferenceSession(
        str(tiny_cnn.path / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    return list(session.run(outputs, {"input": x}))


def inputs(n: int, seed: int = 0) -> npt.NDArray[np.float32]:
    return np.random.default_rng(seed).standard_normal((n, 1, 16, 16)).astype(np.float32)


def test_server_metadata_and_health(client: httpx.Client) -> None:
    meta = client.get("/v2").json()
    assert meta["name"] == "convserve"
    assert {"binary_tensor_data", "classification", "model_repository"} <= set(meta["extensions"])
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get(f"/v2/models/{MODEL}/ready").status_code == 200
    assert client.get(f"/v2/models/{MODEL}/versions/1/ready").status_code == 200
    padded = client.get(f"/v2/models/{MODEL}/versions/01/ready").json()
    assert padded == {"name": MODEL, "version": "1", "ready": True}  # the version it is
    assert client.get(f"/v2/models/{MODEL}/versions/2/ready").status_code == 404


def test_model_metadata_and_config(client: httpx.Client, tiny_cnn: TinyModel) -> None:
    meta = client.get(f"/v2/models/{MODEL}").json()
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 16, 16]}]
    names = [o["name"] for o in meta["outputs"]]
    assert names == ["logits", *(fm.output for fm in tiny_cnn.metadata.feature_maps)]
    assert client.get(f"/v2/models/{MODEL}/versions/1").json() == meta
    config = client.get(f"/v2/models/{MODEL}/config").json()
    # A batch never exceeds the queue it is taken from.
    assert config["max_batch_size"] == min(32, tiny_cnn.metadata.max_batch_size, MAX_QUEUE_SIZE)
    assert config["input"][0]["dims"] == [1, 16, 16]
    assert [i["name"] for i in config["input"]] == ["input"]
    assert "image" in config["parameters"]["image_input"]["string_value"]
    assert config["output"][0] == {"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 0


def test_json_infer_equals_onnx_runtime(client: httpx.Client, tiny_cnn: TinyModel) -> None:
    x = inputs(3)
    fm = "fm.features.pool1"
    body = tensor_request(x, id="req-7", outputs=[{"name": "logits"}, {"name": fm}])
    response = client.post(INFER, json=body)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["id"], answer["model_name"], answer["model_version"]) == ("req-7", MODEL, "1")
    logits, maps = offline(tiny_cnn, x, ["logits", fm])
    out = {o["name"]: o for o in answer["outputs"]}
    assert out["logits"]["shape"] == [3, 10]
    np.testing.assert_allclose(np.array(out["logits"]["data"]).reshape(3, 10), logits, atol=1e-5)
    assert out[fm]["shape"] == list(maps.shape)
    np.testing.assert_allclose(np.array(out[fm]["data"]).reshape(maps.shape), maps, atol=1e-5)
    # No outputs requested: logits only (feature maps only when asked for).
    plain = client.post(INFER, json=tensor_request(x)).json()
    assert [o["name"] for o in plain["outputs"]] == ["logits"]
    # A large body is parsed in a worker thread: the same answer.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(v2_infer, "LARGE_BODY_BYTES", 0)
        assert client.post(INFER, json=body).json() == answer


def test_json_outputs_are_bounded_before_any_work(
    client: httpx.Client, tiny_cnn: TinyModel
) -> None:
    """Feature maps as JSON take ~17 bytes a value: past MAX_JSON_OUTPUT_VALUES a request is
    refused (400) before compute; the same outputs as binary data are answered."""
    fm = "fm.features.conv1"
    one_image = math.prod(offline(tiny_cnn, inputs(1), [fm])[0].shape)
    outputs = [{"name": fm}]
    binary = [{"name": fm, "parameters": {"binary_data": True}}]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(v2_infer, "MAX_JSON_OUTPUT_VALUES", one_image)
        assert client.post(INFER, json=tensor_request(inputs(1), outputs=outputs)).is_success
        refused = client.post(INFER, json=tensor_request(inputs(2), outputs=outputs))
        assert refused.status_code == 400
        assert f"hold {2 * one_image} values for 2 image(s)" in refused.json()["error"]
        assert client.post(INFER, json=tensor_request(inputs(2), outputs=binary)).is_success


def test_binary_request_and_classification(client: httpx.Client, tiny_cnn: TinyModel) -> None:
    x = inputs(2, seed=1)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [2, 1, 16, 16],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes},
                }
            ],
            "outputs": [
                {"name": "logits", "parameters": {"binary_data": True}},
                {"name": "logits", "parameters": {"classification": 3}},
            ],
        }
    ).encode()
    response = client.post(
        INFER,
        content=header + x.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 400  # logits twice
    header = header.replace(b'{"name": "logits", "parameters": {"binary_data": true}}, ', b"")
    header = header.replace(b'"classification": 3', b'"classification": 3, "binary_data": true')
    response = client.post(
        INFER,
        content=header + x.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 200, response.text
    length = int(response.headers["Inference-Header-Content-Length"])
    out = json.loads(response.content[:length])["outputs"][0]
    assert (out["datatype"], out["shape"]) == ("BYTES", [2, 3])
    raw, strings = response.content[length:], []
    while raw:
        size = int.from_bytes(raw[:4], "little")
        strings.append(raw[4 : 4 + size].decode())
        raw = raw[4 + size :]
    (logits,) = offline(tiny_cnn, x, ["logits"])
    for row, image_strings in zip(logits, [strings[:3], strings[3:]], strict=True):
        expected = np.argsort(-row)[:3]
        assert [int(s.split(":")[1]) for s in image_strings] == list(expected)
        assert [s.split(":")[2] for s in image_strings] == [LABELS[i] for i in expected]
        assert float(image_strings[0].split(":")[0]) == pytest.approx(row.max(), abs=1e-5)


def test_bytes_image_input_matches_native(client: httpx.Client) -> None:
    pngs = [random_png(3), random_png(4)]
    body = {
        "inputs": [
            {
                "name": "image",
                "shape": [2],
                "datatype": "BYTES",
                "data": [base64.b64encode(p).decode() for p in pngs],
            }
        ]
    }
    response = client.post(INFER, json=body)
    assert response.status_code == 200, response.text
    v2 = np.array(response.json()["outputs"][0]["data"]).reshape(2, 10)
    files = [("file", (f"{i}.png", p, "image/png")) for i, p in enumerate(pngs)]
    native = client.post(f"/v1/models/{MODEL}/classify", files=files, params={"top_k": 1}).json()
    assert [r["predictions"][0]["index"] for r in native["results"]] == list(v2.argmax(axis=1))


PNG_TYPE = {"Content-Type": "image/png"}
TENSOR = {"name": "input", "shape": [1, 1, 16, 16], "datatype": "FP32", "data": [0.0] * 256}


def test_null_parameters_ids_and_outputs_are_accepted(
    client: httpx.Client, tiny_cnn: TinyModel
) -> None:
    """What KServe's own pydantic `InferenceRequest.model_dump_json()` sends: every unset field
    as null, `parameters` included, at request, input and output level."""
    x = inputs(1, seed=7)
    tensor = {**tensor_request(x)["inputs"][0], "parameters": None}
    bodies = [
        {"id": None, "parameters": None, "inputs": [tensor], "outputs": None},
        {"inputs": [tensor], "outputs": [{"name": "logits", "parameters": None}]},
        {"inputs": [tensor], "outputs": []},  # as Triton reads it: the default outputs
    ]
    (expected,) = offline(tiny_cnn, x, ["logits"])
    for body in bodies:
        response = client.post(INFER, content=json.dumps(body))
        assert response.status_code == 200, response.text
        (output,) = response.json()["outputs"]
        np.testing.assert_allclose(output["data"], expected.ravel(), rtol=1e-5, atol=1e-6)
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    load = client.post(
        f"/v2/repository/models/{MODEL}/load", json={"parameters": None}, headers=admin
    )
    assert load.status_code == 200, load.text


def test_shared_memory_tensors_are_refused(client: httpx.Client) -> None:
    """No shared-memory extension is offered: a tensor placed in a region is a 400 naming the
    parameter, not a 200 that ignores where the client reads or wrote it."""
    region = {"shared_memory_region": "out0", "shared_memory_byte_size": 40}
    asked = tensor_request(inputs(1), outputs=[{"name": "logits", "parameters": region}])
    placed = {
        "inputs": [{**{k: v for k, v in TENSOR.items() if k != "data"}, "parameters": region}]
    }
    for body in (asked, placed):
        response = client.post(INFER, json=body)
        assert response.status_code == 400, response.text
        assert "shared_memory_region is not supported" in response.json()["error"]
    assert "shared_memory" not in " ".join(client.get("/v2").json()["extensions"])


def test_an_unknown_v2_path_is_counted_as_a_native_one_is(client: httpx.Client) -> None:
    """reason="not_found", as on /v1 (docs/v2.md), not a v2-only "http_error"."""
    before = metric_value(
        client.get("/metrics").text, "convserve_failures_total", reason="not_found"
    )
    assert client.get("/v2/no/such/route").status_code == 404
    after = metric_value(
        client.get("/metrics").text, "convserve_failures_total", reason="not_found"
    )
    assert after == before + 1


@pytest.mark.parametrize(
    ("path", "body", "status", "fragment"),
    [
        (INFER, {"inputs": [{**TENSOR, "datatype": "INT32"}]}, 400, "must be FP32"),
        (INFER, {"inputs": [{**TENSOR, "shape": [1, 1, 16, 15]}]}, 400, "expected [N, 1, 16, 16]"),
        (INFER, {"inputs": [{**TENSOR, "data": [0.0] * 255}]}, 400, "needs 256 values"),
        (INFER, {"inputs": [{**TENSOR, "name": "pixels"}]}, 400, "no input 'pixels'"),
        (INFER, {"inputs": [TENSOR, TENSOR]}, 400, "exactly one input"),
        (INFER, {"inputs": [TENSOR], "outputs": [{"name": "probs"}]}, 400, "no output 'probs'"),
        (
            INFER,
            {"inputs": [{**TENSOR, "shape": [40, 1, 16, 16], "data": [0.0] * 256}]},
            400,
            f"outside 1..{MAX_QUEUE_SIZE}",  # from the shape, before the data is counted
        ),
        (
            INFER,
            {
                "inputs": [TENSOR],
                "outputs": [{"name": "fm.features.conv1", "parameters": {"classification": 2}}],
            },
            400,
            "applies to 'logits' only",
        ),
        (
            INFER,
            {
                "inputs": [
                    {
                        "name": "image",
                        "shape": [1],
                        "datatype": "BYTES",
                        "data": ["bm90IGFuIGltYWdl"],
                    }
                ]
            },
            400,
            "not a JPEG/PNG/WEBP",
        ),
        (INFER, {"inputs": "nope"}, 400, "invalid inference request"),
        ("/v2/models/nope/infer", {"inputs": [TENSOR]}, 404, "not loaded"),
        (f"/v2/models/{MODEL}/versions/9/infer", {"inputs": [TENSOR]}, 404, "no loaded version 9"),
        (f"/v2/models/{MODEL}/versions/x/infer", {"inputs": [TENSOR]}, 404, "no version 'x'"),
        ("/v2/models/nope", None, 404, "not loaded"),
        ("/v2/no/such/route", None, 404, "Not Found"),
    ],
)
def test_errors_have_the_v2_body(
    client: httpx.Client, path: str, body: Any, status: int, fragment: str
) -> None:
    response = client.post(path, json=body) if body is not None else client.get(path)
    assert response.status_code == status, response.text
    assert set(response.json()) == {"error"}
    assert fragment in response.json()["error"]


def wait_for(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def queue_depth(client: httpx.Client) -> float:
    return metric_value(client.get("/metrics").text, "convserve_queue_depth", model=MODEL)


@pytest.mark.parametrize("value", ["abc", "-5", "0", "nan", "inf"])
def test_bad_timeout_header_is_a_422_with_the_v2_body(client: httpx.Client, value: str) -> None:
    """X-Request-Timeout-Ms is read as on the native routes: a positive finite number."""
    response = client.post(
        INFER, json=tensor_request(inputs(1)), headers={"X-Request-Timeout-Ms": value}
    )
    assert response.status_code == 422, response.text
    assert set(response.json()) == {"error"}
    assert "X-Request-Timeout-Ms" in response.json()["error"]


@pytest.mark.parametrize("value", ["NaN", "-1", "0", '"5"', "true", "-Infinity"])
def test_bad_timeout_parameter_is_a_400(client: httpx.Client, value: str) -> None:
    """The `timeout` parameter must be a positive number: NaN, which compares false with every
    number, must not pass for one and switch the server's own deadline off."""
    body = json.dumps(tensor_request(inputs(1), parameters={"timeout": 1})).replace(
        '"timeout": 1', f'"timeout": {value}'
    )
    response = client.post(INFER, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert "'timeout' must be a positive number" in response.json()["error"]


def test_v2_and_native_requests_share_a_batch(client: httpx.Client, gate: GatedRuntime) -> None:
    """With the runtime busy, a v2 request (2 rows) and a native one (1 image) run as one batch."""
    png = random_png(5)
    native = {"content": png, "headers": {"content-type": "image/png"}}
    with ThreadPoolExecutor(3) as pool:
        gate.hold()
        try:
            busy = pool.submit(client.post, f"/v1/models/{MODEL}/classify", **native)
            wait_for(lambda: gate.sizes == [1])
            v2 = pool.submit(client.post, INFER, json=tensor_request(inputs(2, seed=9)))
            also_native = pool.submit(client.post, f"/v1/models/{MODEL}/classify", **native)
            wait_for(lambda: gate.submitted == 4)
        finally:
            gate.gate.set()
        for future in (busy, v2, also_native):
            assert future.result().status_code == 200, future.result().text
    assert gate.sizes == [1, 3]
    metrics = client.get("/metrics").text
    assert (
        metric_value(
            metrics, "convserve_requests_total", route="/v2/models/{model}/infer", code="200"
        )
        >= 1
    )
    assert (
        metric_value(
            metrics, "convserve_requests_total", route="/v1/models/{model}/classify", code="200"
        )
        >= 2
    )


def test_full_queue_answers_503_with_the_v2_body(client: httpx.Client, gate: GatedRuntime) -> None:
    with ThreadPoolExecutor(3) as pool:
        gate.hold()
        try:
            busy = pool.submit(client.post, INFER, json=tensor_request(inputs(1)))
            wait_for(lambda: gate.sizes == [1])
            forming = pool.submit(client.post, INFER, json=tensor_request(inputs(1)))
            # taken by the worker into the next batch, which waits for the busy runtime
            wait_for(lambda: gate.submitted == 2 and queue_depth(client) == 0)
            queued = pool.submit(client.post, INFER, json=tensor_request(inputs(3)))
            wait_for(lambda: queue_depth(client) == MAX_QUEUE_SIZE)
            refused = client.post(INFER, json=tensor_request(inputs(1)))
        finally:
            gate.gate.set()
        for future in (busy, forming, queued):
            assert future.result().status_code == 200, future.result().text
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert "queue full" in refused.json()["error"]
    failures = metric_value(
        client.get("/metrics").text, "convserve_failures_total", model=MODEL, reason="queue_full"
    )
    assert failures >= 1


def test_timeout_parameter_is_a_deadline_before_compute(
    client: httpx.Client, gate: GatedRuntime
) -> None:
    """`timeout` (microseconds) is the request's deadline: one that passes before compute is 504,
    and one that the running batch would make miss it is refused at once (503) or, when the
    server has no estimate of that batch's end, dropped with 504 once its deadline passes."""
    past = client.post(INFER, json=tensor_request(inputs(1), parameters={"timeout": 1}))
    assert past.status_code == 504, past.text
    assert set(past.json()) == {"error"}
    with ThreadPoolExecutor(2) as pool:
        gate.hold()
        try:
            busy = pool.submit(client.post, INFER, json=tensor_request(inputs(1)))
            wait_for(lambda: gate.sizes == [1])
            body = tensor_request(inputs(1), parameters={"timeout": 1000})  # 1 ms
            late = pool.submit(client.post, INFER, json=body)
            wait_for(lambda: late.done() or gate.submitted == 2)
            time.sleep(0.01)  # past its deadline while the runtime is still busy
        finally:
            gate.gate.set()
        assert busy.result().status_code == 200
    assert late.result().status_code in (503, 504), late.text
    assert set(late.result().json()) == {"error"}
    assert gate.sizes == [1]  # neither late request reached compute


def test_repository_extension_with_the_admin_key(client: httpx.Client) -> None:
    admin = {"X-API-Key": ADMIN_KEY}
    assert client.post("/v2/repository/index").status_code == 401
    wrong = client.post("/v2/repository/index", headers={"Authorization": "Bearer nope"})
    assert (wrong.status_code, set(wrong.json())) == (403, {"error"})
    index = client.post("/v2/repository/index", headers=admin).json()
    assert {(e["name"], e["version"], e["state"]) for e in index} == {
        ("tiny-cnn", "1", "READY"),
        ("tiny-rgb", "1", "READY"),
    }
    assert client.post("/v2/repository/models/tiny-rgb/unload", headers=admin).status_code == 200
    try:
        assert client.get("/v2/health/ready").status_code == 200  # configured set minus unloaded
        assert client.get("/v2/models/tiny-rgb/ready").status_code == 404
        assert client.post("/v2/repository/index", headers=admin, json={"ready": True}).json() == [
            {"name": "tiny-cnn", "version": "1", "state": "READY", "reason": ""}
        ]
        assert (
            client.post("/v2/models/tiny-rgb/infer", json={"inputs": [TENSOR]}).status_code == 404
        )
    finally:
        assert client.post("/v2/repository/models/tiny-rgb/load", headers=admin).status_code == 200
    assert client.get("/v2/models/tiny-rgb/ready").status_code == 200
    override = {"parameters": {"config": "{}"}}
    refused = client.post("/v2/repository/models/tiny-rgb/load", headers=admin, json=override)
    assert refused.status_code == 400
    assert "not supported" in refused.json()["error"]
    missing = client.post("/v2/repository/models/nope/load", headers=admin)
    assert (missing.status_code, set(missing.json())) == (404, {"error"})
    for path in ("/v2/repository/models/tiny-rgb/load", "/v2/repository/index"):
        broken = client.post(
            path, headers={**admin, "content-type": "application/json"}, content=b"{"
        )
        assert broken.status_code == 400, path
        message = broken.json()["error"]
        assert message.startswith("invalid ")
        assert "pydantic" not in message  # no library dump


def test_api_key_and_disabled_repository(tiny_repo: Path, gate: GatedRuntime) -> None:
    settings = Settings(model_repository=tiny_repo, providers="cpu", api_key=API_KEY, models=MODEL)
    with threaded_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/v2/health/ready").status_code == 200  # health stays open
        assert client.get(f"/v2/models/{MODEL}/ready").status_code == 200
        assert client.get(f"/v2/models/{MODEL}").status_code == 401
        assert client.post(INFER, json={"inputs": [TENSOR]}).status_code == 401
        keyed = client.post(INFER, json={"inputs": [TENSOR]}, headers={"X-API-Key": API_KEY})
        assert keyed.status_code == 200
        disabled = client.post("/v2/repository/index", headers={"X-API-Key": API_KEY})
        assert disabled.status_code == 403
        assert "set CONVSERVE_ADMIN_KEY" in disabled.json()["error"]
        assert "model_repository" not in client.get("/v2").json()["extensions"]


def test_a_model_whose_input_is_called_image_takes_both_kinds(tmp_path: Path) -> None:
    """Many exported graphs call their input `image`: BYTES under that name are encoded files,
    FP32 the preprocessed tensor, and the config says so."""
    repo = tmp_path / "models"
    tiny = write_tiny_model(repo, "named")
    model = onnx.load(str(tiny.path / "model.onnx"))
    for node in model.graph.node:
        node.input[:] = ["image" if name == "input" else name for name in node.input]
    model.graph.input[0].name = "image"
    meta = json.loads((tiny.path / "metadata.json").read_text())
    rewrite_model(tiny.path, model, input={**meta["input"], "name": "image"})
    png = random_png(5)
    settings = Settings(model_repository=repo, default_model="named", providers="cpu")
    with threaded_server(settings) as url, httpx.Client(base_url=url) as client:
        encoded = {"name": "image", "shape": [1], "datatype": "BYTES",
                   "data": [base64.b64encode(png).decode()]}  # fmt: skip
        by_file = client.post("/v2/models/named/infer", json={"inputs": [encoded]})
        native = client.post("/v1/models/named/classify", content=png, headers=PNG_TYPE)
        tensor = {**TENSOR, "name": "image"}
        by_tensor = client.post("/v2/models/named/infer", json={"inputs": [tensor]})
        config = client.get("/v2/models/named/config").json()
    assert by_file.status_code == 200, by_file.text
    logits = np.array(by_file.json()["outputs"][0]["data"])
    assert int(logits.argmax()) == native.json()["results"][0]["predictions"][0]["index"]
    assert by_tensor.status_code == 200, by_tensor.text
    direct = ort.InferenceSession(str(tiny.path / "model.onnx")).run(
        ["logits"], {"image": np.zeros((1, 1, 16, 16), np.float32)}
    )[0]
    np.testing.assert_allclose(by_tensor.json()["outputs"][0]["data"], direct[0], rtol=1e-5)
    assert "beside FP32 'image'" in config["parameters"]["image_input"]["string_value"]
