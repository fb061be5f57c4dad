"""Bodies of the v2 infer route: JSON tensors and the binary tensor data extension.

With the extension the body is the JSON request of `Inference-Header-Content-Length` bytes,
followed by each binary input's bytes in the order of `inputs` (little-endian, row major; a
BYTES element is a 4-byte little-endian length then its bytes). Responses use the same layout.
Nothing here knows about models: infer.py checks tensors against metadata.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from service.errors import BadRequest, describe_validation
from service.jsonbounds import holds_more_values
from service.metadata import ascii_int
from service.v2.schemas import (
    BINARY_DATA_SIZE,
    BYTES,
    FP32,
    HEADER_LENGTH,
    SHARED_MEMORY_REGION,
    InferRequest,
    Parameters,
    RequestInput,
)

FP32_BYTES = 4
LENGTH_PREFIX = struct.Struct("<I")
# FP32 values written to JSON per call: ~2 ms of holding the GIL on a 2-core host.
JSON_SLICE_VALUES = 16_384


@dataclass(frozen=True)
class ParsedRequest:
    request: InferRequest
    binary: dict[int, bytes]  # input index -> its binary data, for inputs sent as binary


def parse_request(
    body: bytes, header_length: str | None, max_values: int | None = None
) -> ParsedRequest:
    """Split and validate an infer body; BadRequest (400) on any malformation, and on a JSON
    header with room for more than `max_values` array values (`holds_more_values`), before
    it is parsed."""
    if header_length is None:
        head, tail = body, b""
    else:
        declared = ascii_int(header_length.strip())
        if declared is None or declared > len(body):
            raise BadRequest(
                f"{HEADER_LENGTH} {header_length!r} is not a length within the "
                f"{len(body)}-byte body"
            )
        head, tail = body[:declared], body[declared:]
    if max_values is not None and holds_more_values(head, max_values):
        raise BadRequest(
            f"the JSON request holds more than {max_values} array values, more than a full "
            "batch of this model's inputs needs: send at most its max_batch_size images (v2 "
            "config) per request"
        )
    try:
        request = InferRequest.model_validate_json(head)
    except ValidationError as err:
        raise BadRequest(f"invalid inference request: {describe_validation(err.errors())}") from err
    binary: dict[int, bytes] = {}
    offset = 0
    for index, tensor in enumerate(request.inputs):
        refuse_shared_memory(tensor.parameters, f"input {tensor.name!r}")
        size = tensor.parameters.get(BINARY_DATA_SIZE)
        if size is None:
            if tensor.data is None:
                raise BadRequest(f"input {tensor.name!r} has neither 'data' nor {BINARY_DATA_SIZE}")
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise BadRequest(f"input {tensor.name!r}: {BINARY_DATA_SIZE} must be an integer >= 0")
        if tensor.data is not None:
            raise BadRequest(f"input {tensor.name!r} has both 'data' and {BINARY_DATA_SIZE}")
        if offset + size > len(tail):
            raise BadRequest(
                f"input {tensor.name!r}: {BINARY_DATA_SIZE} {size} runs past the body's "
                f"{len(tail)} bytes of binary data"
            )
        binary[index] = tail[offset : offset + size]
        offset += size
    if offset != len(tail):
        raise BadRequest(
            f"the body has {len(tail)} bytes of binary tensor data, the inputs declare {offset}"
        )
    return ParsedRequest(request, binary)


def refuse_shared_memory(parameters: Parameters, where: str) -> None:
    """A tensor placed in shared memory cannot be served: the extension is not offered (server
    metadata lists the ones that are), and ignoring the parameter would answer elsewhere."""
    if SHARED_MEMORY_REGION in parameters:
        raise BadRequest(
            f"{where}: {SHARED_MEMORY_REGION} is not supported (this server offers no "
            "shared-memory extension): send the tensor in the body"
        )


def element_count(shape: list[int]) -> int:
    return math.prod(shape)


def fp32_tensor(tensor: RequestInput, raw: bytes | None) -> npt.NDArray[np.float32]:
    """An FP32 input as an array of its declared shape (the byte or element count must match)."""
    if tensor.datatype != FP32:
        raise BadRequest(f"input {tensor.name!r} must be {FP32}, not {tensor.datatype}")
    count = element_count(tensor.shape)
    if raw is not None:
        if len(raw) != count * FP32_BYTES:
            raise BadRequest(
                f"input {tensor.name!r}: shape {tensor.shape} needs {count * FP32_BYTES} bytes "
                f"of {FP32}, got {len(raw)}"
            )
        values = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    else:
        try:
            parsed = np.asarray(tensor.data)
        except (TypeError, ValueError) as err:  # ragged nesting
            raise BadRequest(f"input {tensor.name!r}: 'data' is not an array of numbers") from err
        if parsed.dtype == object and all(type(v) in (int, float) for v in parsed.flat):
            # integers past int64 (numpy keeps them as objects) are numbers like any other
            parsed = np.array([float(v) if abs(v) < 1e308 else math.inf for v in parsed.flat])
        if parsed.size and parsed.dtype.kind not in "iuf":  # strings, booleans, objects
            raise BadRequest(f"input {tensor.name!r}: 'data' holds non-numbers")
        with np.errstate(over="ignore"):  # beyond float32's range: infinity, refused below
            values = parsed.astype(np.float32).reshape(-1)
        if values.size != count:
            raise BadRequest(
                f"input {tensor.name!r}: shape {tensor.shape} needs {count} values, "
                f"got {values.size}"
            )
    if not np.isfinite(values).all():  # NaN or infinity would come back as invalid JSON
        raise BadRequest(f"input {tensor.name!r} holds NaN or infinity")
    return values.reshape(tensor.shape)


def bytes_elements(tensor: RequestInput, raw: bytes | None) -> list[bytes]:
    """A BYTES input's elements: length-prefixed binary data, or base64 strings in JSON."""
    if tensor.datatype != BYTES:
        raise BadRequest(f"input {tensor.name!r} must be {BYTES}, not {tensor.datatype}")
    count = element_count(tensor.shape)
    needs = f"input {tensor.name!r}: shape {tensor.shape} needs {count} elements"
    if raw is not None:
        elements = split_bytes(raw, tensor.name, count)
    else:
        values = _flatten(tensor.data or [])
        if len(values) != count:  # before any is decoded
            raise BadRequest(f"{needs}, got {len(values)}")
        elements = []
        for index, value in enumerate(values):
            if not isinstance(value, str):
                raise BadRequest(f"input {tensor.name!r}: element {index} is not a string")
            try:
                elements.append(base64.b64decode(value, validate=True))
            except (binascii.Error, ValueError) as err:
                raise BadRequest(
                    f"input {tensor.name!r}: element {index} is not base64 (in JSON, BYTES "
                    "image elements are base64 strings)"
                ) from err
    if len(elements) != count:
        raise BadRequest(f"{needs}, got {len(elements)}")
    return elements


def _flatten(values: list[Any]) -> list[Any]:
    flat: list[Any] = []
    for value in values:
        flat.extend(_flatten(value) if isinstance(value, list) else [value])
    return flat


def split_bytes(raw: bytes, name: str, count: int | None = None) -> list[bytes]:
    """Length-prefixed BYTES elements (4-byte little-endian length, then the bytes); BadRequest
    as soon as the data holds more than `count` of them (None: no limit), before the rest are
    split (4 MB of zero lengths are a million elements)."""
    elements: list[bytes] = []
    offset = 0
    while offset < len(raw):
        if len(elements) == count:
            raise BadRequest(f"input {name!r}: more than {count} BYTES elements in its data")
        if offset + LENGTH_PREFIX.size > len(raw):
            raise BadRequest(f"input {name!r}: truncated BYTES length prefix")
        (length,) = LENGTH_PREFIX.unpack_from(raw, offset)
        offset += LENGTH_PREFIX.size
        if offset + length > len(raw):
            raise BadRequest(f"input {name!r}: BYTES element runs past its binary data")
        elements.append(raw[offset : offset + length])
        offset += length
    return elements


def join_bytes(elements: list[bytes]) -> bytes:
    return b"".join(LENGTH_PREFIX.pack(len(e)) + e for e in elements)


@dataclass(frozen=True)
class OutputTensor:
    """One response output: FP32 values or BYTES strings, sent as JSON or binary."""

    name: str
    shape: list[int]
    fp32: npt.NDArray[np.float32] | None = None
    strings: list[bytes] | None = None
    binary: bool = False

    @property
    def datatype(self) -> str:
        return FP32 if self.fp32 is not None else BYTES

    def payload(self) -> bytes:
        if self.fp32 is not None:
            return np.ascontiguousarray(self.fp32, dtype="<f4").tobytes()
        return join_bytes(self.strings or [])

    def json_data(self) -> bytes:
        """The JSON array of the values: FP32 in slices of JSON_SLICE_VALUES, so that no single
        C call (`tolist`, `json.dumps`) holds the GIL for long and the event loop keeps
        answering while megabytes of feature maps are written."""
        if self.fp32 is None:
            strings = [s.decode("utf-8", errors="replace") for s in self.strings or []]
            return _dumps(strings)
        flat = self.fp32.reshape(-1)
        slices = (
            _dumps(flat[start : start + JSON_SLICE_VALUES].tolist())[1:-1]
            for start in range(0, len(flat), JSON_SLICE_VALUES)
        )
        return b"[" + b",".join(slices) + b"]"


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def encode_response(
    header: dict[str, Any], outputs: list[OutputTensor]
) -> tuple[bytes, int | None]:
    """The response body and, when any output is binary, the JSON header's length."""
    chunks: list[bytes] = []
    entries = []
    for output in outputs:
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": output.shape,
        }
        if output.binary:
            data = output.payload()
            entry["parameters"] = {BINARY_DATA_SIZE: len(data)}
            chunks.append(data)
            entries.append(_dumps(entry))
        else:  # the entry's JSON with the data array written in
            entries.append(_dumps(entry)[:-1] + b',"data":' + output.json_data() + b"}")
    head = _dumps({**header, "outputs": []})[:-2] + b",".join(entries) + b"]}"
    if not chunks:
        return head, None
    return head + b"".join(chunks), len(head)
