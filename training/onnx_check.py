"""ONNX Runtime sessions on CPU, running a graph on images, and the parity figure. No torch:
`training.import_onnx` uses this as `training.export` does."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

INPUT_NAME = "input"
LOGITS_NAME = "logits"
FEATURE_MAP_PREFIX = "fm."
PARITY_TOLERANCE = 1e-4
Arrays = dict[str, npt.NDArray[np.float32]]


def output_name(layer: str) -> str:
    return f"{FEATURE_MAP_PREFIX}{layer}"


def ort_session(model: Path | bytes, threads: int | None = None) -> ort.InferenceSession:
    """A quiet CPU session of a model file, or of a serialized model (`SerializeToString()`)."""
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    # Fatal only: a failed run comes back as an exception, which the caller reports in one
    # line; at ERROR, ONNX Runtime also printed it to stderr in colour first.
    options.log_severity_level = 4
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def run_onnx(
    session: ort.InferenceSession, images: npt.NDArray[np.float32], outputs: list[str] | None = None
) -> Arrays:
    names = outputs or [o.name for o in session.get_outputs()]
    results = session.run(names, {session.get_inputs()[0].name: images.astype(np.float32)})
    return dict(zip(names, results, strict=True))


def run_rows(
    session: ort.InferenceSession,
    images: npt.NDArray[np.float32],
    outputs: list[str] | None = None,
    chunk: int | None = None,
) -> Arrays:
    """`run_onnx` for every image: in one batch (`chunk` None), or in runs of at most `chunk`
    images; a graph with a fixed batch size gets its last run filled up with the first images."""
    count = len(images)
    fixed = isinstance(session.get_inputs()[0].shape[0], int)
    if chunk is None or (count <= chunk and not fixed):
        return run_onnx(session, images, outputs)
    filled = images[np.arange(math.ceil(count / chunk) * chunk if fixed else count) % count]
    runs = [run_onnx(session, filled[i : i + chunk], outputs) for i in range(0, len(filled), chunk)]
    return {name: np.concatenate([run[name] for run in runs])[:count] for name in runs[0]}


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
