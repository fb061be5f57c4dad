"""ONNX Runtime sessions on CPU, running a graph on images, and the parity figure. No torch:
`training.import_onnx` uses this as `training.export` does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

INPUT_NAME = "input"
LOGITS_NAME = "logits"
FEATURE_MAP_PREFIX = "fm."
PARITY_TOLERANCE = 1e-4
Arrays = dict[str, npt.NDArray[np.float32]]
# What a session that cannot be created or run raises: ONNX Runtime's own exceptions derive from
# Exception, not RuntimeError.
ORT_ERRORS: tuple[type[Exception], ...] = (
    RuntimeError,
    ValueError,
    ort_state.Fail,
    ort_state.InvalidArgument,
    ort_state.InvalidGraph,
    ort_state.InvalidProtobuf,
    ort_state.NoSuchFile,
    ort_state.NotImplemented,
    ort_state.RuntimeException,
)


def output_name(layer: str) -> str:
    return f"{FEATURE_MAP_PREFIX}{layer}"


def ort_session(path: Path, threads: int | None = None) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(
    session: ort.InferenceSession, images: npt.NDArray[np.float32], outputs: list[str] | None = None
) -> Arrays:
    names = outputs or [o.name for o in session.get_outputs()]
    results = session.run(names, {session.get_inputs()[0].name: images.astype(np.float32)})
    return dict(zip(names, results, strict=True))


def parity_errors(reference: Arrays, candidate: Arrays) -> dict[str, float]:
    """Per output: max|candidate − reference| / max(1, max|reference|) (docs/training.md)."""
    errors = {}
    for name, ref in reference.items():
        got = candidate[name]
        if got.shape != ref.shape:
            errors[name] = float("inf")
            continue
        scale = max(1.0, float(np.abs(ref).max(initial=0.0)))
        errors[name] = float(np.abs(got - ref).max(initial=0.0)) / scale
    return errors
