"""NaN and infinity never reach an answer: a row whose outputs hold them fails with 422
`non_finite_output` (service/pool.py, service/batching.py), on v2 and native routes alike."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from service.pool import nonfinite_rows
from service.settings import Settings
from tests.service.server import metric_value, threaded_server
from tests.service.tiny_model import random_png, rewrite_model, write_tiny_model

MODEL = "tiny-cnn"
BROKEN = "tiny-nan"  # a model whose classifier bias holds a NaN: every answer is NaN
INFER = f"/v2/models/{MODEL}/infer"
FLOAT32_NEAR_MAX = 3.4e38  # finite, so accepted as input; the convolutions overflow


def _nan_bias_model(root: Path) -> None:
    """tiny-nan/1: the tiny CNN with NaN in its last layer's bias (a real broken export)."""
    folder = write_tiny_model(root, BROKEN, color_mode="L", gap_head=False, seed=3).path
    model = onnx.load(folder / "model.onnx")
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.name == "fc.b":
            bias = numpy_helper.to_array(tensor).copy()
            bias[0] = np.nan
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(bias, "fc.b"))
    rewrite_model(folder, model)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    root = tmp_path_factory.mktemp("nan-models")
    write_tiny_model(root, MODEL, color_mode="L", gap_head=True, seed=0)
    _nan_bias_model(root)
    settings = Settings(model_repository=root, default_model=MODEL, providers="cpu")
    with threaded_server(settings) as url, httpx.Client(base_url=url, timeout=30) as c:
        yield c


def fp32_request(data: list[float], **extra: object) -> dict[str, object]:
    """A v2 request of the 1 x 16 x 16 rows in `data`."""
    shape = [len(data) // 256, 1, 16, 16]
    return {
        "inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": data}],
        **extra,
    }


OVERFLOW = [FLOAT32_NEAR_MAX] * 256
FINE = [0.5] * 256


@pytest.mark.parametrize(
    "outputs",
    [
        None,
        [{"name": "logits", "parameters": {"classification": 3}}],
        [{"name": "logits", "parameters": {"binary_data": True}}],
        [{"name": "fm.features.conv1"}],
    ],
    ids=["json", "classification", "binary", "feature-map"],
)
def test_v2_input_that_overflows_is_422_not_nan(
    client: httpx.Client, outputs: list[dict[str, object]] | None
) -> None:
    body = fp32_request(OVERFLOW, outputs=outputs) if outputs else fp32_request(OVERFLOW)
    response = client.post(INFER, content=json.dumps(body))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/json"
    error = json.loads(response.text)["error"]  # strict JSON: no NaN anywhere
    assert "NaN or infinity" in error
    assert "nan" not in response.text.replace("NaN or infinity", "")


def test_one_overflowing_row_fails_its_request_and_nothing_else(client: httpx.Client) -> None:
    mixed = client.post(INFER, content=json.dumps(fp32_request(FINE + OVERFLOW)))
    assert mixed.status_code == 422, mixed.text
    fine = client.post(INFER, content=json.dumps(fp32_request(FINE)))
    assert fine.status_code == 200, fine.text


def test_native_and_v2_answers_of_a_model_that_outputs_nan_are_422(client: httpx.Client) -> None:
    image = random_png(1, mode="L")
    native = client.post(
        f"/v1/models/{BROKEN}/classify", content=image, headers={"content-type": "image/png"}
    )
    assert native.status_code == 422, native.text
    assert native.json()["error"]["code"] == "non_finite_output"
    body = {
        "inputs": [
            {
                "name": "image",
                "shape": [1],
                "datatype": "BYTES",
                "parameters": {"binary_data_size": 4 + len(image)},
            }
        ],
        "outputs": [{"name": "logits", "parameters": {"classification": 2}}],
    }
    header = json.dumps(body).encode()
    v2 = client.post(
        f"/v2/models/{BROKEN}/infer",
        content=header + struct.pack("<I", len(image)) + image,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert v2.status_code == 422, v2.text
    assert "NaN or infinity" in v2.json()["error"]
    metrics = client.get("/metrics").text
    assert metric_value(metrics, "convserve_failures_total", reason="non_finite_output") >= 2


def test_nonfinite_rows_names_each_rows_outputs() -> None:
    logits = np.zeros((3, 4), dtype=np.float32)
    logits[1, 2] = np.inf
    maps = np.zeros((3, 2, 2, 2), dtype=np.float32)
    maps[1, 0, 1, 1] = np.nan
    maps[2, 1, 0, 0] = -np.inf
    assert nonfinite_rows({"logits": logits, "fm": maps}) == {1: ["logits", "fm"], 2: ["fm"]}
    assert nonfinite_rows({"logits": np.zeros((2, 4), dtype=np.float32)}) == {}
