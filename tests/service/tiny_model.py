"""A tiny real CNN built with onnx.helper into a model repository, in exactly the exporter's format.

No torch: conv -> relu -> maxpool -> conv -> relu -> global-average-pool -> linear (a GAP head,
so it has CAM weights), or conv -> relu -> maxpool -> flatten -> linear (no CAM).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from service.metadata import ModelMetadata

INPUT_SIZE = 16
RESIZE = 20
NUM_CLASSES = 10
LABELS = [f"class-{i}" for i in range(NUM_CLASSES)]
CONV1_CHANNELS = 4
CONV2_CHANNELS = 8
OPSET = 17


@dataclass(frozen=True)
class TinyModel:
    name: str
    version: int
    path: Path
    metadata: ModelMetadata


def _conv(rng: np.random.Generator, out_ch: int, in_ch: int) -> npt.NDArray[np.float32]:
    return (rng.standard_normal((out_ch, in_ch, 3, 3)) * 0.5).astype(np.float32)


def build_onnx(
    channels: int,
    *,
    gap_head: bool,
    seed: int,
    size: int = INPUT_SIZE,
    conv1: int = CONV1_CHANNELS,
    conv2: int = CONV2_CHANNELS,
) -> tuple[onnx.ModelProto, dict[str, npt.NDArray[np.float32]]]:
    """The graph and its weights (conv1 (4,C,3,3), fc (10, K), ...)."""
    rng = np.random.default_rng(seed)
    weights = {
        "conv1.w": _conv(rng, conv1, channels),
        "conv1.b": (rng.standard_normal(conv1) * 0.1).astype(np.float32),
    }
    half = size // 2
    nodes = [
        helper.make_node(
            "Conv", ["input", "conv1.w", "conv1.b"], ["c1"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]
        ),
        helper.make_node("Relu", ["c1"], ["fm.features.conv1"]),
        helper.make_node(
            "MaxPool",
            ["fm.features.conv1"],
            ["fm.features.pool1"],
            kernel_shape=[2, 2],
            strides=[2, 2],
        ),
    ]
    outputs = [("fm.features.conv1", [conv1, size, size])]
    outputs.append(("fm.features.pool1", [conv1, half, half]))
    if gap_head:
        weights["conv2.w"] = _conv(rng, conv2, conv1)
        weights["conv2.b"] = (rng.standard_normal(conv2) * 0.1).astype(np.float32)
        nodes += [
            helper.make_node(
                "Conv",
                ["fm.features.pool1", "conv2.w", "conv2.b"],
                ["c2"],
                pads=[1, 1, 1, 1],
                kernel_shape=[3, 3],
            ),
            helper.make_node("Relu", ["c2"], ["fm.features.conv2"]),
            helper.make_node("GlobalAveragePool", ["fm.features.conv2"], ["gap"]),
            helper.make_node("Flatten", ["gap"], ["flat"]),
        ]
        outputs.append(("fm.features.conv2", [conv2, half, half]))
        features = conv2
    else:
        nodes.append(helper.make_node("Flatten", ["fm.features.pool1"], ["flat"]))
        features = conv1 * half * half
    weights["fc.w"] = (rng.standard_normal((NUM_CLASSES, features)) * 0.5).astype(np.float32)
    weights["fc.b"] = (rng.standard_normal(NUM_CLASSES) * 0.1).astype(np.float32)
    nodes.append(helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], transB=1))
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", channels, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", NUM_CLASSES])]
        + [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", *s]) for n, s in outputs],
        initializer=[numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model, weights


def filter_grid(weights: npt.NDArray[np.float32]) -> Image.Image:
    """First-conv weights (out, in, 3, 3) as a greyscale PNG row, like the exporter's grids."""
    tiles = weights[:, 0]
    low, high = float(tiles.min()), float(tiles.max())
    scaled = ((tiles - low) / (high - low) * 255).astype(np.uint8)
    return Image.fromarray(np.concatenate(list(scaled), axis=1))


def write_tiny_model(
    root: Path,
    name: str = "tiny-cnn",
    version: int = 1,
    *,
    color_mode: str = "L",
    gap_head: bool = True,
    seed: int = 0,
    size: int = INPUT_SIZE,
    conv1: int = CONV1_CHANNELS,
    conv2: int = CONV2_CHANNELS,
) -> TinyModel:
    """Write models/<name>/<version>/ (model.onnx, metadata.json, filters/, cam_weights.npy)."""
    channels = 1 if color_mode == "L" else 3
    model, weights = build_onnx(
        channels, gap_head=gap_head, seed=seed, size=size, conv1=conv1, conv2=conv2
    )
    folder = root / name / str(version)
    (folder / "filters").mkdir(parents=True, exist_ok=True)
    onnx_bytes = model.SerializeToString()
    (folder / "model.onnx").write_bytes(onnx_bytes)
    filter_grid(weights["conv1.w"]).save(folder / "filters" / "features.conv1.png")
    half = size // 2
    feature_maps = [
        {
            "layer": "features.conv1",
            "output": "fm.features.conv1",
            "shape": [conv1, size, size],
        },
        {
            "layer": "features.pool1",
            "output": "fm.features.pool1",
            "shape": [conv1, half, half],
        },
    ]
    cam = None
    if gap_head:
        feature_maps.append(
            {
                "layer": "features.conv2",
                "output": "fm.features.conv2",
                "shape": [conv2, half, half],
            }
        )
        np.save(folder / "cam_weights.npy", weights["fc.w"])
        cam = {"feature_map": "fm.features.conv2", "weights": "cam_weights.npy"}
    metadata = ModelMetadata.model_validate(
        {
            "name": name,
            "version": version,
            "architecture": "tinynet-gap" if gap_head else "tinynet-flat",
            "input": {
                "name": "input",
                "shape": [channels, size, size],
                "color_mode": color_mode,
            },
            "preprocessing": {
                "resize": size + RESIZE - INPUT_SIZE,
                "center_crop": size,
                "interpolation": "bilinear",
                "mean": [0.5] * channels,
                "std": [0.25] * channels,
            },
            "output": {"name": "logits"},
            "feature_maps": feature_maps,
            "cam": cam,
            "filters": [
                {
                    "layer": "features.conv1",
                    "file": "filters/features.conv1.png",
                    "shape": list(weights["conv1.w"].shape),
                }
            ],
            "labels": LABELS,
            "max_batch_size": 64,
            "training": {"dataset": "random-weights", "seed": seed},
            "export": {
                "opset": OPSET,
                "torch": "none",
                "parity_max_abs_diff": 0.0,
                "sha256": hashlib.sha256(onnx_bytes).hexdigest(),
            },
        }
    )
    (folder / "metadata.json").write_text(metadata.model_dump_json(indent=2))
    return TinyModel(name, version, folder, metadata)


def rewrite_model(folder: Path, model: onnx.ModelProto, **metadata_changes: object) -> None:
    """Replace a version's model.onnx, keeping metadata.json's sha256 in step (and applying
    `metadata_changes`); the metadata must still be valid."""
    data = model.SerializeToString()
    (folder / "model.onnx").write_bytes(data)
    metadata = json.loads((folder / "metadata.json").read_text())
    metadata["export"]["sha256"] = hashlib.sha256(data).hexdigest()
    metadata.update(metadata_changes)
    ModelMetadata.model_validate(metadata)
    (folder / "metadata.json").write_text(json.dumps(metadata))


def random_png(seed: int, size: tuple[int, int] = (24, 30), mode: str = "RGB") -> bytes:
    """A PNG of random pixels (width, height); deterministic per seed."""
    import io

    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    image = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
