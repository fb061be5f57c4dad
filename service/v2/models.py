"""v2 server and model descriptions: server metadata, model metadata, Triton model config,
and the repository index. Plain dicts: the protocol fixes their JSON shapes."""

from __future__ import annotations

import asyncio
from typing import Any

from service import repository
from service.errors import VersionNotFound
from service.manager import LoadedVersion, ModelManager
from service.metadata import parse_version as parse_version_number
from service.runtime import GPU_PROVIDERS
from service.settings import Settings
from service.v2.schemas import BACKEND, FP32, IMAGE_INPUT, PLATFORM

SERVER_NAME = "convserve"
SERVER_VERSION = "0.1.0"
BASE_EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration"]
DYNAMIC = -1  # the batch axis in v2 metadata shapes


def parse_version(text: str, model: str) -> int:
    """A path's version: a positive integer, else 404 (no such version can exist)."""
    version = parse_version_number(text)
    if version is None:
        raise VersionNotFound(f"model {model!r} has no version {text!r}", model=model)
    return version


def server_metadata(settings: Settings) -> dict[str, Any]:
    extensions = list(BASE_EXTENSIONS)
    if settings.admin_key is not None:
        extensions.append("model_repository")
    return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": extensions}


def model_metadata(manager: ModelManager, loaded: LoadedVersion) -> dict[str, Any]:
    meta = loaded.metadata
    outputs = [{"name": meta.output.name, "datatype": FP32, "shape": [DYNAMIC, meta.num_classes]}]
    outputs += [
        {"name": fm.output, "datatype": FP32, "shape": [DYNAMIC, *fm.shape]}
        for fm in meta.feature_maps
    ]
    return {
        "name": meta.name,
        "versions": [str(v) for v in manager.versions(meta.name)],
        "platform": PLATFORM,
        # Only the tensor input: generic clients (perf_analyzer) fill every listed input. The
        # alternative BYTES `image` input is described in the config's parameters.
        "inputs": [
            {"name": meta.input.name, "datatype": FP32, "shape": [DYNAMIC, *meta.input.shape]}
        ],
        "outputs": outputs,
    }


def model_config(settings: Settings, loaded: LoadedVersion) -> dict[str, Any]:
    """Triton's JSON model configuration (model_config.proto as JSON)."""
    meta = loaded.metadata
    gpu = loaded.runtime.provider in GPU_PROVIDERS
    return {
        "name": meta.name,
        "platform": PLATFORM,
        "backend": BACKEND,
        "version_policy": {"latest": {"num_versions": 1}},
        "max_batch_size": loaded.batcher.max_batch_size,
        "input": [
            {
                "name": meta.input.name,
                "data_type": "TYPE_FP32",
                "format": "FORMAT_NCHW",
                "dims": list(meta.input.shape),
            },
        ],
        "output": [
            {"name": meta.output.name, "data_type": "TYPE_FP32", "dims": [meta.num_classes]},
            *(
                {"name": fm.output, "data_type": "TYPE_FP32", "dims": list(fm.shape)}
                for fm in meta.feature_maps
            ),
        ],
        "dynamic_batching": {
            "max_queue_delay_microseconds": round(settings.max_queue_delay_ms * 1000),
            "default_queue_policy": {"max_queue_size": settings.max_queue_size},
        },
        "instance_group": [
            {
                "name": meta.name,
                "kind": "KIND_GPU" if gpu else "KIND_CPU",
                "count": loaded.runtime.instances,
            }
        ],
        "parameters": {
            "architecture": {"string_value": meta.architecture},
            # Not listed as an input: perf_analyzer fills every input the config lists, even
            # optional ones, and a request carries exactly one of the two.
            "image_input": {
                "string_value": f"{IMAGE_INPUT}: BYTES [N], encoded JPEG/PNG/WebP files, "
                + (
                    f"instead of {meta.input.name!r}"
                    if meta.input.name != IMAGE_INPUT
                    else f"beside FP32 {meta.input.name!r} of the same name"
                )
                + "; preprocessed by the service"
            },
        },
    }


async def repository_index(manager: ModelManager, *, ready_only: bool) -> list[dict[str, str]]:
    """Every version in the repository folder with its state (READY / UNAVAILABLE / UNLOADED)."""
    refs, _ = await asyncio.to_thread(repository.scan, manager.root, None)
    entries = []
    for ref in refs:
        key = (ref.model, ref.version)
        if key in manager.loaded:
            state, reason = "READY", ""
        elif ref.model in manager.unloaded:
            state, reason = "UNAVAILABLE", "unloaded"
        elif key in manager.errors:
            state, reason = "UNAVAILABLE", manager.errors[key][1]
        else:
            state, reason = "UNAVAILABLE", "not loaded"
        if ready_only and state != "READY":
            continue
        entries.append(
            {"name": ref.model, "version": str(ref.version), "state": state, "reason": reason}
        )
    return entries
