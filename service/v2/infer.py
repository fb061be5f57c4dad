"""The v2 infer handler: validate against metadata, submit rows to the version's batcher.

The same `Classifier.preprocess` / `Classifier.run` the native routes use: v2 and native
requests to one version share its batcher, its batches and its metrics. No HTTP here.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from service.classify import Classifier, WaitDisconnect
from service.errors import BadRequest
from service.manager import LoadedVersion, ModelManager
from service.metadata import ModelMetadata
from service.postprocess import top1
from service.runtime import Outputs
from service.v2.codec import (
    OutputTensor,
    ParsedRequest,
    bytes_elements,
    encode_response,
    fp32_tensor,
    parse_request,
    refuse_shared_memory,
)
from service.v2.schemas import (
    BINARY_DATA,
    BINARY_DATA_OUTPUT,
    BYTES,
    CLASSIFICATION,
    IMAGE_INPUT,
    TIMEOUT_US,
    InferRequest,
    Parameters,
)

LARGE_BODY_BYTES = 256 * 1024
# Array values of a JSON request beyond its data (shape, outputs, parameters): the values
# bound (`parse_request`) allows this many over what a full batch's data can hold.
ENVELOPE_VALUES = 1024
NO_TIMEOUT_US = 86_400 * 10**6  # a `timeout` of a day or more sets no deadline
# FP32 values one response may write as JSON (~17 bytes each: about 140 MB); binary outputs
# take 4 bytes a value and are not bounded beyond the images a request may hold.
MAX_JSON_OUTPUT_VALUES = 8 * 2**20


@dataclass(frozen=True)
class InferResponse:
    body: bytes
    header_length: int | None  # set when the body carries binary outputs
    version: int


@dataclass(frozen=True)
class OutputPlan:
    name: str
    classification: int | None
    binary: bool


def _flag(parameters: Parameters, key: str, default: bool, where: str) -> bool:
    value = parameters.get(key, default)
    if not isinstance(value, bool):
        raise BadRequest(f"{where}: parameter {key!r} must be a boolean")
    return value


def plan_outputs(meta: ModelMetadata, request: InferRequest) -> list[OutputPlan]:
    """Requested outputs, checked before any work; none requested = logits alone."""
    default_binary = _flag(request.parameters, BINARY_DATA_OUTPUT, False, "request")
    if not request.outputs:  # none, or an empty list as Triton reads it: the logits
        return [OutputPlan(meta.output.name, None, default_binary)]
    known = [meta.output.name, *(fm.output for fm in meta.feature_maps)]
    plans: list[OutputPlan] = []
    for output in request.outputs:
        where = f"output {output.name!r}"
        refuse_shared_memory(output.parameters, where)
        if output.name not in known:
            raise BadRequest(f"{meta.name} has no output {output.name!r} (known: {known})")
        if any(p.name == output.name for p in plans):
            raise BadRequest(f"{where} is requested twice")
        count = output.parameters.get(CLASSIFICATION)
        if count is not None:
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise BadRequest(f"{where}: {CLASSIFICATION} must be an integer >= 1")
            if output.name != meta.output.name:
                raise BadRequest(f"{where}: {CLASSIFICATION} applies to {meta.output.name!r} only")
            count = min(count, meta.num_classes)
        binary = _flag(output.parameters, BINARY_DATA, default_binary, where)
        plans.append(OutputPlan(output.name, count, binary))
    return plans


Rows = npt.NDArray[np.float32] | list[bytes]


@dataclass(frozen=True)
class DecodedRequest:
    request: InferRequest
    rows: Rows


def max_json_values(meta: ModelMetadata, max_batch_size: int) -> int:
    """The most array values a JSON request to this model can need: a full batch of FP32 rows
    nested as [N][C][H][W] (each row 1 + C + C*H + C*H*W values: its leaves and the nested
    arrays, each a value of its parent), which also covers N encoded images, plus the rest."""
    per_row = 1
    nested = 1
    for side in meta.input.shape:
        nested *= side
        per_row += nested
    return max_batch_size * per_row + ENVELOPE_VALUES


def decode_request(
    body: bytes, header_length: str | None, meta: ModelMetadata, max_batch_size: int
) -> DecodedRequest:
    """Parse an infer body into the rows to run; every count (values, batch size, elements) is
    checked before the work it bounds. Runs in a worker thread for large bodies."""
    parsed = parse_request(body, header_length, max_json_values(meta, max_batch_size))
    return DecodedRequest(parsed.request, _batch_rows(parsed, meta, max_batch_size))


def _check_batch_size(count: int, max_batch_size: int) -> None:
    if not 1 <= count <= max_batch_size:
        raise BadRequest(f"batch size {count} is outside 1..{max_batch_size} (max_batch_size)")


def _batch_rows(parsed: ParsedRequest, meta: ModelMetadata, max_batch_size: int) -> Rows:
    """The FP32 tensor (N, C, H, W), or the encoded images of the BYTES `image` input; the
    batch size, from the shape, is checked before either is built."""
    request = parsed.request
    expected = (
        f"{meta.input.name!r} (FP32 [N, {', '.join(map(str, meta.input.shape))}]) "
        f"or {IMAGE_INPUT!r} (BYTES [N], encoded images)"
    )
    if len(request.inputs) != 1:
        raise BadRequest(f"send exactly one input: {expected}")
    tensor, raw = request.inputs[0], parsed.binary.get(0)
    # A model whose own input is called `image` takes both: BYTES are encoded files.
    encoded = tensor.name == IMAGE_INPUT and (
        tensor.name != meta.input.name or tensor.datatype == BYTES
    )
    if tensor.name == meta.input.name and not encoded:
        if len(tensor.shape) != 4 or tuple(tensor.shape[1:]) != meta.input.shape:
            raise BadRequest(
                f"input {tensor.name!r} has shape {tensor.shape}, expected "
                f"[N, {', '.join(map(str, meta.input.shape))}]"
            )
        _check_batch_size(tensor.shape[0], max_batch_size)
        return fp32_tensor(tensor, raw)
    if encoded:
        if len(tensor.shape) not in (1, 2) or (len(tensor.shape) == 2 and tensor.shape[1] != 1):
            raise BadRequest(f"input {IMAGE_INPUT!r} has shape {tensor.shape}, expected [N]")
        _check_batch_size(tensor.shape[0], max_batch_size)
        return bytes_elements(tensor, raw)
    raise BadRequest(f"{meta.name} has no input {tensor.name!r}: send {expected}")


def _check_json_values(meta: ModelMetadata, plans: list[OutputPlan], images: int) -> None:
    """BadRequest, before any work, when the FP32 outputs asked for as JSON would hold more
    than MAX_JSON_OUTPUT_VALUES values: a small request could otherwise ask for hundreds of
    megabytes of feature maps written as text."""
    sizes = {meta.output.name: meta.num_classes}
    sizes |= {fm.output: math.prod(fm.shape) for fm in meta.feature_maps}
    json_plans = [p for p in plans if not p.binary and p.classification is None]
    values = images * sum(sizes[p.name] for p in json_plans)
    if values > MAX_JSON_OUTPUT_VALUES:
        raise BadRequest(
            f"the outputs asked for as JSON ({', '.join(p.name for p in json_plans)}) hold "
            f"{values} values for {images} image(s), more than {MAX_JSON_OUTPUT_VALUES}: ask "
            "for them with binary_data, or for fewer images or outputs"
        )


def _deadline(request: InferRequest, deadline: float | None) -> float | None:
    """The `timeout` parameter (microseconds, as tritonclient sends it) tightens the deadline."""
    timeout_us = request.parameters.get(TIMEOUT_US)
    if timeout_us is None:
        return deadline
    if (
        isinstance(timeout_us, bool)
        or not isinstance(timeout_us, int | float)
        or not timeout_us > 0  # also NaN, which no comparison holds for
    ):
        raise BadRequest(f"parameter {TIMEOUT_US!r} must be a positive number of microseconds")
    if timeout_us >= NO_TIMEOUT_US:  # also: an int past float's range would not convert
        return deadline
    own = time.monotonic() + timeout_us / 1e6
    return own if deadline is None else min(own, deadline)


def _classification(logits: npt.NDArray[np.float32], labels: list[str], count: int) -> list[bytes]:
    """Top-`count` classes of one image as "score:index:label", highest score first."""
    order = np.argsort(-logits, kind="stable")[:count]
    return [f"{float(logits[i]):f}:{int(i)}:{labels[i]}".encode() for i in order]


def build_outputs(
    meta: ModelMetadata, plans: list[OutputPlan], raw: list[Outputs]
) -> list[OutputTensor]:
    outputs = []
    for plan in plans:
        values = np.stack([out[plan.name] for out in raw])
        if plan.classification is None:
            outputs.append(
                OutputTensor(plan.name, list(values.shape), fp32=values, binary=plan.binary)
            )
            continue
        strings = [
            s for row in values for s in _classification(row, meta.labels, plan.classification)
        ]
        outputs.append(
            OutputTensor(
                plan.name, [len(raw), plan.classification], strings=strings, binary=plan.binary
            )
        )
    return outputs


async def infer(
    manager: ModelManager,
    classifier: Classifier,
    model: str,
    version: int | None,
    body: bytes,
    header_length: str | None,
    *,
    deadline: float | None,
    wait_disconnect: WaitDisconnect | None = None,
) -> InferResponse:
    async with manager.lease(model, version) as loaded:
        meta = loaded.metadata
        batch = loaded.batcher.max_batch_size
        if len(body) > LARGE_BODY_BYTES:  # parsing megabytes of JSON numbers: off the event loop
            decoded = await asyncio.get_running_loop().run_in_executor(
                classifier.body_pool, decode_request, body, header_length, meta, batch
            )
        else:
            decoded = decode_request(body, header_length, meta, batch)
        request = decoded.request
        deadline = _deadline(request, deadline)
        plans = plan_outputs(meta, request)
        _check_json_values(meta, plans, len(decoded.rows))
        raw = await _run(classifier, loaded, decoded.rows, plans, deadline, wait_disconnect)
        if any(p.classification is not None for p in plans):  # the server ranks the classes
            for out in raw:
                loaded.predictions.record(*top1(out[meta.output.name]))
    header: dict[str, object] = {"model_name": meta.name, "model_version": str(meta.version)}
    if request.id is not None:
        header["id"] = request.id

    def encode() -> tuple[bytes, int | None]:
        return encode_response(header, build_outputs(meta, plans, raw))

    if any(p.name != meta.output.name for p in plans):  # feature maps: large, off the loop
        body_out, length = await asyncio.to_thread(encode)
    else:  # a few logits cost less than a thread hop
        body_out, length = encode()
    return InferResponse(body_out, length, meta.version)


async def _run(
    classifier: Classifier,
    loaded: LoadedVersion,
    rows: Rows,
    plans: list[OutputPlan],
    deadline: float | None,
    wait_disconnect: WaitDisconnect | None,
) -> list[Outputs]:
    meta = loaded.metadata
    maps = frozenset(p.name for p in plans if p.name != meta.output.name)
    with loaded.batcher.admission(len(rows), deadline) as reservation:
        if isinstance(rows, list):  # encoded images
            tensors = await classifier.preprocess(loaded, rows)
        else:
            tensors = list(rows)
        items = await classifier.run(
            loaded,
            tensors,
            maps,
            deadline=deadline,
            wait_disconnect=wait_disconnect,
            reservation=reservation,
        )
    return [item.future.result() for item in items]
