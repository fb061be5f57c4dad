"""`python -m service` with the committed default model, driven by real v2 clients:
tritonclient.http, a KServe-style JSON request with httpx, and bench/v2_perf.py's report."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from service.metadata import ModelMetadata
from tests.conftest import REPO_ROOT, require_fashion_mnist, require_system_part
from tests.service.server import ServiceProcess

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
MODEL = "lenet5-fashion"
MODEL_DIR = REPO_ROOT / "models" / MODEL / "1"
ADMIN_KEY = "e2e-admin"
IMAGES = 16


@pytest.fixture(scope="module")
def metadata() -> ModelMetadata:
    require_system_part(
        (MODEL_DIR / "model.onnx").is_file(), f"models/{MODEL}/1", "make train-default"
    )
    return ModelMetadata.model_validate_json((MODEL_DIR / "metadata.json").read_text())


@pytest.fixture(scope="module")
def images() -> npt.NDArray[np.uint8]:
    from training.data.idx import load_fashion_mnist

    require_fashion_mnist()
    return load_fashion_mnist(train=False)[0][:IMAGES]


@pytest.fixture(scope="module")
def service(
    metadata: ModelMetadata, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    log = tmp_path_factory.mktemp("logs") / "service.log"
    with ServiceProcess(
        log,
        model_repository=REPO_ROOT / "models",
        models=MODEL,
        providers="cpu",
        admin_key=ADMIN_KEY,
    ) as process:
        yield process


@pytest.fixture
def client(service: ServiceProcess) -> Iterator[object]:
    client = triton.InferenceServerClient(service.base_url.removeprefix("http://"))
    yield client
    client.close()


def model_inputs(images: npt.NDArray[np.uint8], meta: ModelMetadata) -> npt.NDArray[np.float32]:
    """What preprocessing makes of 28x28 greyscale images: /255, then (x - mean) / std."""
    mean, std = np.float32(meta.preprocessing.mean[0]), np.float32(meta.preprocessing.std[0])
    return ((images.astype(np.float32) / np.float32(255) - mean) / std)[:, None]


def encode(image: npt.NDArray[np.uint8], fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def test_health_metadata_and_config(client: object, metadata: ModelMetadata) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready(MODEL)
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    meta = client.get_model_metadata(MODEL)
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"][0] == {"name": "input", "datatype": "FP32", "shape": [-1, 1, 28, 28]}
    outputs = {o["name"]: o["shape"] for o in meta["outputs"]}
    assert outputs["logits"] == [-1, 10]
    for fm in metadata.feature_maps:
        assert outputs[fm.output] == [-1, *fm.shape]
    config = client.get_model_config(MODEL)
    assert config["max_batch_size"] == min(32, metadata.max_batch_size)
    assert "max_queue_delay_microseconds" in config["dynamic_batching"]


def test_binary_batch_equals_native_api_and_offline_ort(
    client: object, service: ServiceProcess, images: npt.NDArray[np.uint8], metadata: ModelMetadata
) -> None:
    x = model_inputs(images, metadata)
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    conv1 = metadata.feature_maps[0].output
    result = client.infer(
        MODEL,
        [tensor],
        outputs=[
            triton.InferRequestedOutput("logits", binary_data=True),
            triton.InferRequestedOutput(conv1, binary_data=True),
        ],
        request_id="batch-1",
    )
    assert result.get_response()["id"] == "batch-1"
    logits = result.as_numpy("logits")
    assert result.as_numpy(conv1).shape == (IMAGES, *metadata.feature_maps[0].shape)
    session = ort.InferenceSession(
        str(MODEL_DIR / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (offline,) = session.run(["logits"], {"input": x})
    np.testing.assert_allclose(logits, offline, atol=1e-4)
    files = [("file", (f"{i}.png", encode(im, "PNG"), "image/png")) for i, im in enumerate(images)]
    native = httpx.post(
        f"{service.base_url}/v1/models/{MODEL}/classify",
        files=files,
        params={"top_k": 1},
        timeout=60,
    ).json()
    native_top1 = [r["predictions"][0]["index"] for r in native["results"]]
    assert list(logits.argmax(axis=1)) == native_top1 == list(offline.argmax(axis=1))


def test_classification_extension(
    client: object, images: npt.NDArray[np.uint8], metadata: ModelMetadata
) -> None:
    x = model_inputs(images[:4], metadata)
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=False)
    wanted = triton.InferRequestedOutput("logits", binary_data=False, class_count=3)
    top = client.infer(MODEL, [tensor], outputs=[wanted]).as_numpy("logits")
    assert top.shape == (4, 3)
    plain = triton.InferRequestedOutput("logits", binary_data=True)
    logits = client.infer(
        MODEL, [tensor], outputs=[plain], request_compression_algorithm="gzip"
    ).as_numpy("logits")
    for row, entries in zip(logits, top, strict=True):
        parsed = [str(e).split(":", 2) for e in entries]  # JSON BYTES come back as str
        assert [int(index) for _, index, _ in parsed] == list(np.argsort(-row)[:3])
        assert [label for *_, label in parsed] == [metadata.labels[i] for i in np.argsort(-row)[:3]]
        assert float(parsed[0][0]) == pytest.approx(float(row.max()), abs=1e-5)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_are_one_stream(
    client: object, images: npt.NDArray[np.uint8], metadata: ModelMetadata, algorithm: str
) -> None:
    """tritonclient compresses a request as one gzip member or zlib stream: accepted, where
    anything after the stream's end would be refused (docs/security.md)."""
    x = model_inputs(images[:2], metadata)
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=True)
    plain = client.infer(MODEL, [tensor]).as_numpy("logits")
    packed = client.infer(MODEL, [tensor], request_compression_algorithm=algorithm)
    np.testing.assert_array_equal(packed.as_numpy("logits"), plain)


def test_bytes_image_input_png_and_jpeg(
    client: object, images: npt.NDArray[np.uint8], metadata: ModelMetadata
) -> None:
    x = model_inputs(images[:8], metadata)
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    expected = client.infer(MODEL, [tensor]).as_numpy("logits")
    for fmt in ("PNG", "JPEG"):
        files = np.array([encode(im, fmt) for im in images[:8]], dtype=np.object_)
        encoded = triton.InferInput("image", [len(files)], "BYTES")
        encoded.set_data_from_numpy(files, binary_data=True)
        logits = client.infer(MODEL, [encoded]).as_numpy("logits")
        if fmt == "PNG":  # lossless: the same tensor as the FP32 input
            np.testing.assert_allclose(logits, expected, atol=1e-5)
        else:
            assert (logits.argmax(axis=1) == expected.argmax(axis=1)).mean() >= 0.75


def test_load_unload_with_admin_key_and_unknown_model(client: object) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with pytest.raises(InferenceServerException) as refused:
        client.unload_model(MODEL)
    assert refused.value.status() == "401"
    index = client.get_model_repository_index(headers=admin)
    assert {"name": MODEL, "version": "1", "state": "READY", "reason": ""} in index
    client.unload_model(MODEL, headers=admin)
    try:
        assert not client.is_model_ready(MODEL)
        assert not client.is_server_ready()  # no model left to serve
    finally:
        client.load_model(MODEL, headers=admin)
    assert client.is_model_ready(MODEL)
    assert client.is_server_ready()
    with pytest.raises(InferenceServerException) as unknown:
        client.get_model_metadata("no-such-model")
    assert unknown.value.status() == "404"
    tensor = triton.InferInput("input", [1, 1, 28, 28], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 1, 28, 28), np.float32))
    with pytest.raises(InferenceServerException) as missing:
        client.infer("no-such-model", [tensor])
    assert missing.value.status() == "404"


def test_kserve_json_request_with_httpx(
    service: ServiceProcess, images: npt.NDArray[np.uint8], metadata: ModelMetadata
) -> None:
    """The plain JSON request of the KServe v2 docs: no extension, no client library."""
    x = model_inputs(images[:2], metadata)
    request = {
        "id": "kserve-1",
        "inputs": [
            {
                "name": "input",
                "shape": [2, 1, 28, 28],
                "datatype": "FP32",
                "data": x.ravel().tolist(),
            }
        ],
    }
    response = httpx.post(f"{service.base_url}/v2/models/{MODEL}/infer", json=request, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert (body["id"], body["model_name"], body["model_version"]) == ("kserve-1", MODEL, "1")
    (output,) = body["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("logits", "FP32", [2, 10])
    logits = np.array(output["data"]).reshape(2, 10)
    session = ort.InferenceSession(
        str(MODEL_DIR / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    np.testing.assert_allclose(logits, session.run(["logits"], {"input": x})[0], atol=1e-4)


def test_perf_report_is_parsed(service: ServiceProcess, tmp_path: Path) -> None:
    """bench/v2_perf.py (perf_analyzer's stand-in here) at concurrency 1..8, report parsed."""
    report = tmp_path / "v2_perf.csv"
    subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "bench" / "v2_perf.py"),
            "-u",
            service.base_url.removeprefix("http://"),
            "--concurrency-range",
            "1:8:7",
            "--duration",
            "1",
            "-f",
            str(report),
        ],
        check=True,
        cwd=REPO_ROOT,
        timeout=120,
        capture_output=True,
    )
    sys.path.insert(0, str(REPO_ROOT / "bench"))
    try:
        from v2_perf import read_report
    finally:
        sys.path.remove(str(REPO_ROOT / "bench"))
    rows = read_report(report)
    assert [r["concurrency"] for r in rows] == [1, 8]
    for row in rows:
        assert row["inferences_per_s"] > 0
        assert row["p99_us"] >= row["p50_us"] > 0
