"""Open Inference Protocol (KServe v2) request bodies, validated with pydantic.

Responses are built as plain dicts (JSON edges): their shapes are fixed by the protocol and
documented in docs/v2.md.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

Dim = Annotated[int, Field(strict=True, ge=0)]
Parameters = dict[str, Any]


def _none_is_empty(value: object) -> object:
    return {} if value is None else value


# `"parameters": null` is no parameters: KServe's own pydantic models send it for every unset
# field (`InferenceRequest.model_dump_json()`), at request, input and output level.
ParametersField = Annotated[Parameters, BeforeValidator(_none_is_empty)]

# Datatypes of the protocol this service produces or accepts.
FP32 = "FP32"
BYTES = "BYTES"
PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
IMAGE_INPUT = "image"  # optional BYTES input: encoded image files, preprocessed by the service

# Request and output parameters of the extensions.
BINARY_DATA_SIZE = "binary_data_size"
BINARY_DATA = "binary_data"
BINARY_DATA_OUTPUT = "binary_data_output"
CLASSIFICATION = "classification"
TIMEOUT_US = "timeout"  # tritonclient's per-request timeout, microseconds
# Parameter of the shared-memory extensions, which this server does not offer.
SHARED_MEMORY_REGION = "shared_memory_region"
HEADER_LENGTH = "Inference-Header-Content-Length"


class _Body(BaseModel):
    # Unknown fields are ignored, as Triton and KServe do (clients add their own).
    model_config = ConfigDict(extra="ignore", frozen=True)


class RequestInput(_Body):
    name: str
    shape: list[Dim]
    datatype: str
    parameters: ParametersField = Field(default_factory=dict)
    data: list[Any] | None = None


class RequestOutput(_Body):
    name: str
    parameters: ParametersField = Field(default_factory=dict)


class InferRequest(_Body):
    id: str | None = None
    parameters: ParametersField = Field(default_factory=dict)
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class RepositoryIndexRequest(_Body):
    ready: bool = False


class RepositoryLoadRequest(_Body):
    parameters: ParametersField = Field(default_factory=dict)
