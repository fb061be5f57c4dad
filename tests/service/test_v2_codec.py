"""service/v2/codec.py: the binary tensor data extension and JSON tensors, without HTTP."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import numpy as np
import pytest

from service.errors import BadRequest
from service.v2.codec import (
    OutputTensor,
    bytes_elements,
    encode_response,
    fp32_tensor,
    join_bytes,
    parse_request,
    split_bytes,
)


def binary_body(header: dict[str, Any], *chunks: bytes) -> tuple[bytes, str]:
    head = json.dumps(header).encode()
    return head + b"".join(chunks), str(len(head))


def test_binary_inputs_are_sliced_in_input_order() -> None:
    first = np.arange(6, dtype="<f4")
    second = join_bytes([b"abc", b"", b"\xff\x00"])
    body, length = binary_body(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 3],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 24},
                },
                {
                    "name": "s",
                    "shape": [3],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(second)},
                },
            ]
        },
        first.tobytes(),
        second,
    )
    parsed = parse_request(body, length)
    x, s = parsed.request.inputs
    np.testing.assert_array_equal(fp32_tensor(x, parsed.binary[0]), first.reshape(2, 3))
    assert bytes_elements(s, parsed.binary[1]) == [b"abc", b"", b"\xff\x00"]


def test_json_tensors_flat_or_nested_and_base64_bytes() -> None:
    body = json.dumps(
        {
            "inputs": [
                {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4.5]]},
                {
                    "name": "s",
                    "shape": [1],
                    "datatype": "BYTES",
                    "data": [base64.b64encode(b"\x89PNG").decode()],
                },
            ]
        }
    ).encode()
    parsed = parse_request(body, None)
    assert parsed.binary == {}
    x, s = parsed.request.inputs
    assert fp32_tensor(x, None).tolist() == [[1.0, 2.0], [3.0, 4.5]]
    assert bytes_elements(s, None) == [b"\x89PNG"]


@pytest.mark.parametrize(
    ("header", "tail", "length", "message"),
    [
        ({"inputs": []}, b"", None, "inputs"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}, b"", None, "neither"),
        (
            {"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}]},
            b"",
            None,
            "shape",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [1],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": 8},
                    }
                ]
            },
            b"1234",
            "",
            "runs past",
        ),
        (
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": [1],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": 4},
                    }
                ]
            },
            b"12345",
            "",
            "declare 4",
        ),
        (
            {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]},
            b"",
            "99999",
            "Inference-Header-Content-Length",
        ),
    ],
)
def test_malformed_bodies_are_bad_requests(
    header: dict[str, Any], tail: bytes, length: str | None, message: str
) -> None:
    head = json.dumps(header).encode()
    if length == "":
        length = str(len(head))
    with pytest.raises(BadRequest, match=message):
        parse_request(head + tail, length)


def test_not_json_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="invalid inference request"):
        parse_request(b"\x00\x01 not json", None)


def test_fp32_size_and_datatype_mismatches() -> None:
    parsed = parse_request(
        json.dumps(
            {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3]}]}
        ).encode(),
        None,
    )
    with pytest.raises(BadRequest, match="needs 4 values, got 3"):
        fp32_tensor(parsed.request.inputs[0], None)
    with pytest.raises(BadRequest, match="needs 16 bytes"):
        fp32_tensor(parsed.request.inputs[0], b"\x00" * 12)
    int_input = parsed.request.inputs[0].model_copy(update={"datatype": "INT64"})
    with pytest.raises(BadRequest, match="must be FP32"):
        fp32_tensor(int_input, None)


@pytest.mark.parametrize(
    "data",
    [
        ["1.0", "2.0"],
        [True, False],
        [[1.0], [2.0, 3.0]],
        [1.0, 1e39],
        [{"a": 1}, 2],
        [2**70, "x"],
        [True, 2**70],
        [1, 10**400],  # past float64: infinity
    ],
)
def test_fp32_json_data_must_be_finite_numbers(data: list[Any]) -> None:
    body = {"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": data}]}
    parsed = parse_request(json.dumps(body).encode(), None)
    with pytest.raises(BadRequest, match="numbers|non-numbers|NaN or infinity|needs 2 values"):
        fp32_tensor(parsed.request.inputs[0], None)


def test_fp32_json_integers_of_any_size_are_numbers() -> None:
    """Integers past int64 are JSON numbers like 1.18e21 is: converted, not "non-numbers"."""
    body = (
        b'{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [[%d, %d, 2.5]]}]}'
    )
    parsed = parse_request(body % (2**64, 2**70), None)
    values = fp32_tensor(parsed.request.inputs[0], None)
    np.testing.assert_array_equal(values, np.array([[2**64, 2**70, 2.5]], dtype=np.float32))


def test_fp32_binary_data_must_be_finite() -> None:
    body, length = binary_body(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 8},
                }
            ]
        },
        np.array([1.0, np.nan], dtype="<f4").tobytes(),
    )
    parsed = parse_request(body, length)
    with pytest.raises(BadRequest, match="NaN or infinity"):
        fp32_tensor(parsed.request.inputs[0], parsed.binary[0])


def test_truncated_bytes_elements() -> None:
    with pytest.raises(BadRequest, match="length prefix"):
        split_bytes(b"\x01\x00", "s")
    with pytest.raises(BadRequest, match="runs past"):
        split_bytes(struct.pack("<I", 10) + b"abc", "s")


def test_response_mixes_json_and_binary_outputs() -> None:
    logits = np.array([[0.5, -1.0]], dtype=np.float32)
    labels = [b"0.5:0:a"]
    body, length = encode_response(
        {"model_name": "m", "id": "7"},
        [
            OutputTensor("logits", [1, 2], fp32=logits, binary=True),
            OutputTensor("cls", [1, 1], strings=labels, binary=False),
        ],
    )
    assert length is not None
    header = json.loads(body[:length])
    assert header["id"] == "7"
    binary_out, json_out = header["outputs"]
    assert binary_out["parameters"] == {"binary_data_size": 8}
    assert "data" not in binary_out
    assert json_out == {"name": "cls", "datatype": "BYTES", "shape": [1, 1], "data": ["0.5:0:a"]}
    np.testing.assert_array_equal(np.frombuffer(body[length:], dtype="<f4"), logits.ravel())
    json_only, no_length = encode_response({}, [OutputTensor("l", [1, 2], fp32=logits)])
    assert no_length is None
    assert json.loads(json_only)["outputs"][0]["data"] == [0.5, -1.0]
