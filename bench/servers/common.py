"""What every comparison server shares: the same model file, the same decode, the same top-5.

The baselines decode with convserve's own `service.preprocess.preprocess`, bit-exact with
training (`jpeg_draft=False`: what a server written around torchvision's transforms does), so
every system does the same work per image and only the serving differs; on JPEGs large enough
to draft, convserve's DCT-scaled decoding (on by default) is part of what is compared.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from service.metadata import ModelMetadata  # noqa: E402
from service.preprocess import configure_pillow, preprocess  # noqa: E402

MAX_PIXELS = 40_000_000
TOP_K = 5


def providers() -> list[str]:
    """ORT providers for every system of the run: BENCH_PROVIDERS=cuda on a GPU host
    (bench/gpu.sh), the CPU otherwise."""
    if os.environ.get("BENCH_PROVIDERS", "cpu") == "cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class Model:
    """One ONNX session plus its metadata; `tensor` decodes, `answers` makes top-5 JSON."""

    def __init__(self, version_dir: Path, threads: int = 0) -> None:
        self.metadata = ModelMetadata.model_validate_json(
            (version_dir / "metadata.json").read_text()
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or (os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(version_dir / "model.onnx"), options, providers=providers()
        )
        self.input_name = self.metadata.input.name
        self.output_name = self.metadata.output.name
        configure_pillow(MAX_PIXELS)

    def tensor(self, data: bytes) -> np.ndarray:
        return preprocess(data, self.metadata, max_pixels=MAX_PIXELS, jpeg_draft=False)

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def answer(self, logits: np.ndarray) -> dict[str, Any]:
        exp = np.exp(logits - logits.max())
        probs = exp / exp.sum()
        best = np.argsort(-probs)[:TOP_K]
        labels = self.metadata.labels
        return {"predictions": [{"label": labels[i], "probability": float(probs[i])} for i in best]}


def version_dir(repository: Path, model: str) -> Path:
    versions = sorted((repository / model).glob("[0-9]*"), key=lambda p: int(p.name))
    return versions[-1]


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--repository", type=Path, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0: cores).")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--batch-timeout-ms", type=float, default=2.0)
    return p


def dumps(value: Any) -> str:
    return json.dumps(value)
