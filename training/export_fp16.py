"""Opt-in float16 export (`python -m training.export --fp16`): weights and compute in float16.

The float32 graph written by `onnx_io.export_onnx` is rewritten by ONNX Runtime's own converter
(`onnxruntime.transformers.float16`, part of the installed onnxruntime-gpu wheel) with
`keep_io_types=True`: the input `input` and every output (`logits`, `fm.<layer>`) stay float32,
with Cast nodes inside the graph, so the service, metadata.json and clients see no difference.

The parity check then runs through ONNX Runtime's CPU provider, which has float16 kernels for
some ops and wraps the others in Casts to float32 (its InsertCastTransformer), so no op needs to
be kept in float32 by a block list for the CPU check; the converter's default block list
(ops without float16 kernels anywhere, none of which our CNNs use) is left as it is.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import onnx
from onnxruntime.transformers.float16 import convert_float_to_float16

logger = logging.getLogger(__name__)
Precision = Literal["float32", "float16"]
# Per output, max|onnx - torch| / max(1, max|torch|) against the float32 PyTorch model (the
# parity figure of docs/training.md, Export). Measured through ORT on CPU: at most 1.3e-3
# (trained LeNet-5, 256 Fashion-MNIST images, every feature map), 4.6e-4 (random ResNet-50,
# 224x224 photos); PyTorch's own float16 forward, which rounds every activation as a GPU would,
# 1.5e-3 and 6.6e-4 (docs/training.md, "fp16 export"). 1e-2 leaves room for other weights and
# the GPU's kernels, while a real defect (a wrong op, an overflow to inf, a NaN) still fails.
FP16_PARITY_TOLERANCE = 1e-2


def convert_to_float16(path: Path) -> None:
    """Rewrite the float32 ONNX file at `path` with float16 weights and compute, float32 I/O."""
    model = onnx.load(str(path), load_external_data=False)
    converted = convert_float_to_float16(model, keep_io_types=True)
    onnx.save(converted, str(path))
    before = sum(t.ByteSize() for t in model.graph.initializer)
    after = sum(t.ByteSize() for t in converted.graph.initializer)
    logger.info("float16: initializers %.1f MB -> %.1f MB", before / 1e6, after / 1e6)
