"""`python -m training.import_onnx`: any ONNX image classifier → models/<name>/<version>/.

Checks the file (one self-contained ONNX graph, one NCHW float32 input with 1 or 3 channels, an
output of shape (N, num_classes), an opset ONNX Runtime loads), adds feature maps as `fm.<layer>`
outputs and renames the logits output `logits`, makes a fixed batch of 1 dynamic where that is
safe, and writes model.onnx, metadata.json, the first conv layer's filter grid and, for a
GAP + linear head, cam_weights.npy. Before writing, the original and the written graph run
through ONNX Runtime on real photos and their logits must agree within 1e-4. With --int8 the
written graph is then statically quantized and kept only when it agrees with float32 on held-out
images (training/export_int8.py). Needs onnx and onnxruntime only, never torch. Each refusal is
one ERROR line and exit status 2, with nothing written to the repository.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import onnx
import onnx.external_data_helper
import onnxruntime as ort
from PIL import Image

from service.metadata import MAX_RESIZE_RATIO, NAME_PATTERN, Preprocessing
from service.preprocess import RESAMPLE, resize_and_crop, to_input
from service.runtime import ORT_ERRORS
from training.artifacts import sha256_of, write_cam_weights, write_filters
from training.cli import command_logger, positive_int, run_cli
from training.data.photos import views_of
from training.errors import UserError
from training.export_int8 import (
    DEFAULT_CALIBRATION_IMAGES,
    DEFAULT_EVALUATION_IMAGES,
    Images,
    Int8Plan,
    add_int8_arguments,
    check_int8_options,
    fallback_notice,
    folder_split,
    photo_split,
    plan_from_sets,
    quantize_version,
)
from training.imagenet import IMAGENET_MEAN, IMAGENET_STD, RESIZE_RATIO
from training.labels import IMAGENET, IMAGENET_CLASSES, resolve_labels
from training.onnx_check import (
    LOGITS_NAME,
    PARITY_TOLERANCE,
    Arrays,
    ort_session,
    output_name,
    parity_errors,
    run_onnx,
    run_rows,
)
from training.onnx_graph import (
    BATCH_DIM,
    MAX_ONNX_BYTES,
    cam_head,
    default_opset,
    dims,
    external_tensors,
    first_conv_weight,
    graph_inputs,
    layer_names,
    probe_graph,
    producers,
    serving_graph,
    softmax_input,
    tensor_names,
)
from training.publish import (
    CAM_FILE,
    DEFAULT_MAX_BATCH_SIZE,
    MODEL_FILE,
    check_name,
    check_repository,
    next_version,
    publishing,
    write_metadata,
)

logger = command_logger(__name__, __spec__)
DEFAULT_INPUT_SIZE = 224  # the crop for a graph whose height and width are dynamic
COLOR_MODES = {1: "L", 3: "RGB"}
PROBABILITY_SUM_TOLERANCE = 1e-4  # rows of an output summing to 1 within this are probabilities
PREPROCESS_KEYS = ("resize", "center_crop", "interpolation", "mean", "std", "color_mode")
REQUIRED_PREPROCESS_KEYS = ("resize", "center_crop", "mean", "std")
# scikit-learn's two sample photos (224x149 thumbnails), bundled with the service for its web page.
PHOTOS = ("photo-china.jpg", "photo-flower.jpg")
PHOTO_DIR = Path(__file__).resolve().parents[1] / "service" / "static" / "samples"
# Views of each photo for the parity check: whole, mirrored, and two off-centre crops
# (fractions left, upper, right, lower), 8 images in all.
MAX_ALL_FEATURE_MAPS = 64
# Nodes of a graph quantized already (QDQ, QOperator, dynamic quantization).
QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "ConvInteger",
        "MatMulInteger",
    }
)
# Ops whose 4-D outputs `--feature-maps all` offers: convolutions, pools and activations.
ALL_MAP_OPS = frozenset(
    {
        "Conv",
        "ConvTranspose",
        "MaxPool",
        "AveragePool",
        "LpPool",
        "Relu",
        "LeakyRelu",
        "PRelu",
        "Elu",
        "Selu",
        "Celu",
        "Gelu",
        "Sigmoid",
        "HardSigmoid",
        "HardSwish",
        "Mish",
        "Softplus",
        "Tanh",
        "Clip",
    }
)
ORT_SOURCE_LOCATION = re.compile(r"/onnxruntime_src/\S+:\d+ [^(]*\([^)]*\) ")
ColorMode = Literal["L", "RGB"]


@dataclass(frozen=True)
class Preprocess:
    """metadata.json's preprocessing plus the colour mode (the service's eval pipeline)."""

    color_mode: ColorMode
    resize: int
    center_crop: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"

    def metadata(self) -> dict[str, Any]:
        return {
            "resize": self.resize,
            "center_crop": self.center_crop,
            "interpolation": self.interpolation,
            "mean": list(self.mean),
            "std": list(self.std),
        }


@dataclass(frozen=True)
class InputInfo:
    """The graph's one input: its name, channels, and the batch, height and width it declares
    (an int when fixed, None when dynamic)."""

    name: str
    channels: int
    batch: int | None
    height: int | None
    width: int | None


@dataclass(frozen=True)
class FeatureMapChoice:
    layer: str
    tensor: str
    shape: tuple[int, int, int]


@dataclass(frozen=True)
class ImportConfig:
    model: Path
    name: str
    repository: Path = Path("models")
    version: int | None = None
    force: bool = False
    labels: str | None = None  # None: imagenet for 1000 classes, else required
    logits: str | None = None  # None: the first output of shape (N, classes)
    preprocess: str = "imagenet"
    feature_maps: str = "auto"
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    int8: bool = False
    calibration: int = DEFAULT_CALIBRATION_IMAGES
    calibration_data: str | None = None
    gate_images: int | None = None
    accept_accuracy_loss: bool = False


def one_line(err: BaseException) -> str:
    """An ONNX Runtime error on one line, without the C++ source location."""
    return ORT_SOURCE_LOCATION.sub("", " ".join(str(err).split()))


# --- reading and checking the file -------------------------------------------------------------
def read_graph(path: Path) -> onnx.ModelProto:
    """The parsed model, with the tensors it keeps in external files read into it; UserError
    when it is no ONNX model."""
    if not path.is_file():
        raise UserError(f"{path} does not exist" if not path.exists() else f"{path} is no file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf raises several unrelated types
        raise UserError(f"{path} is not an ONNX model: {one_line(err)}") from err
    if not model.graph.node or not model.opset_import or not model.graph.output:
        raise UserError(f"{path} is not an ONNX model (no graph in it)")
    external = external_tensors(model)
    if external:
        inline_external_data(model, path, len(external))
    return model


def inline_external_data(model: onnx.ModelProto, path: Path, count: int) -> None:
    """Read the `count` tensors that `model` keeps in external files beside `path` (as
    `torch.onnx.export` writes by default) into it: the repository serves one self-contained
    model.onnx. UserError when they cannot be read, or make a model of 2 GiB or more."""
    try:  # onnx refuses a location outside the model's folder
        onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
    except Exception as err:  # noqa: BLE001 - missing files, bad offsets, paths: one answer
        raise UserError(
            f"{path} keeps {count} tensor(s) in external data files that cannot be read: "
            f"{one_line(err)}"
        ) from err
    if model.ByteSize() > MAX_ONNX_BYTES:
        raise UserError(
            f"{path} with its external data is 2 GiB or more: the model repository serves one "
            "self-contained model.onnx, which protobuf limits to 2 GiB"
        )
    logger.info("read %d tensor(s) from external data files into the model", count)


def input_info(model: onnx.ModelProto) -> InputInfo:
    """The one NCHW float32 input with 1 or 3 channels; UserError otherwise."""
    inputs = graph_inputs(model)
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs) or "none"
        raise UserError(f"the graph has {len(inputs)} inputs ({names}); exactly one image input")
    feed = inputs[0]
    shape = dims(feed)
    described = "(" + ", ".join("?" if d is None else str(d) for d in shape or []) + ")"
    elem = feed.type.tensor_type.elem_type
    if elem != onnx.TensorProto.FLOAT:
        kind = onnx.TensorProto.DataType.Name(elem) if elem else "non-tensor"
        raise UserError(f"input {feed.name} is {kind}; the service feeds float32")
    if shape is None or len(shape) != 4:
        raise UserError(f"input {feed.name} has shape {described}; expected (N, C, H, W)")
    batch, channels, height, width = (d if isinstance(d, int) else None for d in shape)
    if channels not in COLOR_MODES:
        raise UserError(
            f"input {feed.name} has shape {described}: expected (N, C, H, W) with C = 1 or 3 "
            "(channels-first, as the service feeds images)"
        )
    if height is not None and width is not None and height != width:
        raise UserError(
            f"input {feed.name} is {height}x{width}; the service feeds square center crops"
        )
    return InputInfo(feed.name, channels, batch, height, width)


def load_session(path: Path) -> ort.InferenceSession:
    try:
        return ort_session(path)
    except ORT_ERRORS as err:
        raise UserError(f"ONNX Runtime cannot load {path}: {one_line(err)}") from err


def logits_output(session: ort.InferenceSession, wanted: str | None = None) -> tuple[str, int]:
    """`wanted`, or the first output of declared shape (N, num_classes), num_classes ≥ 2."""
    outputs = session.get_outputs()
    candidates = [
        (o.name, o.shape[1])
        for o in outputs
        if o.type == "tensor(float)"
        and isinstance(o.shape, list)
        and len(o.shape) == 2
        and isinstance(o.shape[1], int)
        and o.shape[1] >= 2
    ]
    described = ", ".join(f"{o.name} {o.shape} {o.type}" for o in outputs)
    if wanted is not None:
        chosen = [c for c in candidates if c[0] == wanted]
        if not chosen:
            raise UserError(
                f"--logits {wanted}: not a float output of shape (N, num_classes); outputs are "
                f"{described}"
            )
        return wanted, int(chosen[0][1])
    if not candidates:
        raise UserError(f"no float output of shape (N, num_classes): outputs are {described}")
    if len(candidates) > 1:
        others = ", ".join(name for name, _ in candidates[1:])
        logger.info(
            "logits: %s (also of shape (N, classes), ignored: %s; --logits picks another)",
            candidates[0][0],
            others,
        )
    name, classes = candidates[0]
    return name, int(classes)


# --- preprocessing and the parity images ------------------------------------------------------
def resolve_preprocess(choice: str, info: InputInfo) -> Preprocess:
    """`imagenet` or a JSON file; its crop must be the input's size (or becomes it when the
    graph's height and width are dynamic)."""
    size = info.height or info.width
    if choice == IMAGENET:
        if info.channels != 3:
            raise UserError(
                f"--preprocess imagenet needs a 3-channel input; input {info.name} has "
                f"{info.channels}: pass --preprocess FILE.json"
            )
        crop = size or DEFAULT_INPUT_SIZE
        resize = round(crop * RESIZE_RATIO)
        return Preprocess("RGB", resize, crop, IMAGENET_MEAN, IMAGENET_STD)
    pre = read_preprocess_file(Path(choice), info.channels)
    if size is not None and pre.center_crop != size:
        raise UserError(
            f"--preprocess {choice}: center_crop {pre.center_crop} but input {info.name} is "
            f"{size}x{size}"
        )
    return pre


def read_preprocess_file(path: Path, channels: int) -> Preprocess:
    """A JSON object: resize, center_crop, mean, std, optional interpolation and color_mode."""
    where = f"--preprocess {path}"
    try:
        content = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise UserError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{where}: cannot read it: {err}") from err
    except json.JSONDecodeError as err:
        raise UserError(f"{where}: not JSON: {err}") from err
    if not isinstance(content, dict):
        raise UserError(f"{where}: expected a JSON object with keys {', '.join(PREPROCESS_KEYS)}")
    unknown = sorted(set(content) - set(PREPROCESS_KEYS))
    if unknown:
        raise UserError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(PREPROCESS_KEYS)}")
    missing = [k for k in REQUIRED_PREPROCESS_KEYS if k not in content]
    if missing:
        raise UserError(f"{where}: missing key(s) {missing}")
    for key in ("resize", "center_crop"):
        value = content[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{where}: {key} must be a positive integer, got {value!r}")
    if not content["center_crop"] <= content["resize"] <= MAX_RESIZE_RATIO * content["center_crop"]:
        raise UserError(
            f"{where}: resize must be from center_crop to {MAX_RESIZE_RATIO} x center_crop, got "
            f"{content['resize']} for {content['center_crop']}"
        )
    interpolation = content.get("interpolation", "bilinear")
    if interpolation not in RESAMPLE:
        raise UserError(f"{where}: interpolation must be one of {', '.join(RESAMPLE)}")
    color_mode = content.get("color_mode", COLOR_MODES[channels])
    if color_mode not in COLOR_MODES.values():
        raise UserError(f"{where}: color_mode must be L or RGB, got {color_mode!r}")
    if color_mode != COLOR_MODES[channels]:
        raise UserError(f"{where}: color_mode {color_mode} but the input has {channels} channels")
    values: dict[str, tuple[float, ...]] = {}
    for key in ("mean", "std"):
        value = content[key]
        if (
            not isinstance(value, list)
            or len(value) != channels
            or any(isinstance(v, bool) or not isinstance(v, int | float) for v in value)
            or not all(math.isfinite(v) for v in value)
        ):
            raise UserError(f"{where}: {key} must be a list of {channels} numbers, got {value!r}")
        values[key] = tuple(float(v) for v in value)
    if any(s <= 0 for s in values["std"]):
        raise UserError(f"{where}: std must be positive")
    return Preprocess(
        color_mode,
        content["resize"],
        content["center_crop"],
        values["mean"],
        values["std"],
        interpolation,
    )


def preprocess_image(image: Image.Image, pre: Preprocess) -> npt.NDArray[np.float32]:
    """(C, H, W) float32, exactly as the service computes it for a decoded image: convert,
    shorter side to `resize`, center crop, /255, (x - mean) / std."""
    spec = _service_spec(pre)
    return to_input(resize_and_crop(image.convert(pre.color_mode), spec), spec)


@functools.lru_cache(maxsize=8)
def _service_spec(pre: Preprocess) -> Preprocessing:
    """`pre` as the service's Preprocessing, validated once (images are preprocessed by the
    hundred for calibration)."""
    return Preprocessing.model_validate(pre.metadata())


def sample_photos() -> list[Image.Image]:
    """The photos the service bundles, RGB."""
    photos = []
    for name in PHOTOS:
        try:
            with Image.open(PHOTO_DIR / name) as opened:
                photos.append(opened.convert("RGB"))
        except OSError as err:
            raise UserError(f"cannot read the sample photo {PHOTO_DIR / name}: {err}") from err
    return photos


def parity_images(pre: Preprocess) -> npt.NDArray[np.float32]:
    """(8, C, H, W): views of the bundled photos (`views_of`), preprocessed."""
    return np.stack([preprocess_image(view, pre) for view in views_of(sample_photos(), 8)])


# --- running graphs ---------------------------------------------------------------------------
def run_or_refuse(
    session: ort.InferenceSession,
    images: npt.NDArray[np.float32],
    outputs: list[str],
    chunk: int | None,
    what: str,
) -> Arrays:
    try:
        return run_rows(session, images, outputs, chunk)
    except ORT_ERRORS as err:
        raise UserError(f"ONNX Runtime failed to run {what}: {one_line(err)}") from err


def served_logits(
    model: onnx.ModelProto,
    output: str,
    values: npt.NDArray[np.float32],
    images: npt.NDArray[np.float32],
    chunk: int | None,
) -> tuple[str, npt.NDArray[np.float32]]:
    """The tensor served as logits and its values on `images`: `output`, or the input of the
    Softmax that computes it. The service applies softmax to the logits itself: probabilities
    given to it would come back flattened towards uniform (the ranking unchanged)."""
    source = softmax_input(model, output)
    if source is not None:
        session = ort_session(probe_graph(model, [source]).SerializeToString())
        before = run_or_refuse(session, images, [source], chunk, "the graph's final softmax")
        if before[source].shape == values.shape:
            logger.info(
                "logits: %s, the input of the softmax that computes %s (the service applies "
                "softmax itself)",
                source,
                output,
            )
            return source, before[source]
    rows = values.sum(axis=1)
    if values.min() >= 0 and np.allclose(rows, 1, atol=PROBABILITY_SUM_TOLERANCE):
        logger.warning(
            "%s looks like probabilities (every row ≥ 0 and sums to 1), not logits: the service "
            "applies softmax again, which flattens the probabilities it reports (the top-k order "
            "is unchanged); import the graph without its final softmax",
            output,
        )
    return output, values


def graph_precision(model: onnx.ModelProto) -> Literal["float32", "float16", "int8"]:
    """int8 when the graph is already quantized (any of QUANTIZED_OPS: QDQ or QOperator, as
    `onnxruntime.quantization` writes either); float16 when its convolution weights are float16
    initializers (a graph converted with float32 inputs and outputs kept); else float32."""
    if any(n.op_type in QUANTIZED_OPS for n in model.graph.node):
        return "int8"
    initializers = {t.name: t.data_type for t in model.graph.initializer}
    weights = [initializers.get(n.input[1]) for n in model.graph.node if n.op_type == "Conv"]
    return "float16" if onnx.TensorProto.FLOAT16 in weights else "float32"


def intermediate_maps(
    model: onnx.ModelProto, image: npt.NDArray[np.float32]
) -> dict[str, tuple[int, int, int]]:
    """(C, H, W) of every 4-D float tensor a node computes, H·W > 1, in graph order: one run of
    `image` (N, C, H, W) with every node output made a graph output."""
    tensors = [out for node in model.graph.node for out in node.output if out]
    probe = probe_graph(model, tensors)
    try:
        session = ort_session(probe.SerializeToString())
        names = [o.name for o in session.get_outputs() if o.type == "tensor(float)"]
        values = run_onnx(session, image, names)
    except ORT_ERRORS as err:
        raise UserError(f"ONNX Runtime failed to run the graph's layers: {one_line(err)}") from err
    shapes: dict[str, tuple[int, int, int]] = {}
    for tensor in tensors:
        value = values.get(tensor)
        if value is not None and value.ndim == 4 and value.shape[0] == len(image):
            channels, height, width = (int(d) for d in value.shape[1:])
            if height * width > 1:
                shapes[tensor] = (channels, height, width)
    return shapes


def batch_problem(model: onnx.ModelProto, images: npt.NDArray[np.float32]) -> str | None:
    """None when a batch of two different images gives, row by row, what each gives alone
    (every output, within the parity tolerance); else what went wrong."""
    try:
        session = ort_session(model.SerializeToString())
        outputs = [o.name for o in session.get_outputs()]
        pair = run_onnx(session, images[:2], outputs)
        alone = run_rows(session, images[:2], outputs, chunk=1)
    except ORT_ERRORS as err:
        return one_line(err)
    errors = parity_errors(alone, pair)
    worst = max(errors, key=lambda name: errors[name])
    if not errors[worst] <= PARITY_TOLERANCE:
        return f"output {worst} differs from batch 1 by {errors[worst]:.2e}"
    return None


# --- feature maps -------------------------------------------------------------------------------
def choose_feature_maps(
    model: onnx.ModelProto,
    choice: str,
    shapes: dict[str, tuple[int, int, int]],
    names: dict[str, str],
) -> list[FeatureMapChoice]:
    """`auto` (the last map at each resolution), `all` (conv, pool and activation outputs),
    `none`, or a comma list of tensor (or layer) names."""
    made_by = producers(model)

    def entry(tensor: str) -> FeatureMapChoice:
        return FeatureMapChoice(names[tensor], tensor, shapes[tensor])

    if choice == "none":
        return []
    if choice == "auto":
        last: dict[tuple[int, int], str] = {}
        for tensor, (_, height, width) in shapes.items():  # graph order
            last.pop((height, width), None)
            last[(height, width)] = tensor
        ordered = sorted(last.values(), key=list(shapes).index)
        return [entry(t) for t in ordered]
    if choice == "all":
        found = [t for t in shapes if made_by[t].op_type in ALL_MAP_OPS]
        if len(found) > MAX_ALL_FEATURE_MAPS:
            keep = np.linspace(0, len(found) - 1, MAX_ALL_FEATURE_MAPS).round().astype(int)
            logger.warning(
                "--feature-maps all: %d conv/pool/activation maps, keeping %d evenly spaced "
                "from input to output (name more with a comma list)",
                len(found),
                MAX_ALL_FEATURE_MAPS,
            )
            found = [found[i] for i in sorted(set(keep.tolist()))]
        return [entry(t) for t in found]
    if not choice.replace(",", "").strip():
        raise UserError(
            f"--feature-maps {choice!r} names no map: auto, all, none or a comma list of tensor "
            "or layer names"
        )
    by_layer = {layer: tensor for tensor, layer in names.items()}
    chosen: list[FeatureMapChoice] = []
    unknown: list[str] = []
    not_maps: list[str] = []
    for name in (part.strip() for part in choice.split(",")):
        if not name:
            continue
        match = name if name in names else by_layer.get(name)
        if match is None:
            unknown.append(name)
        elif match not in shapes:
            not_maps.append(name)
        elif match not in [c.tensor for c in chosen]:
            chosen.append(entry(match))
    valid = ", ".join(f"{t} ({names[t]})" if names[t] != t else t for t in list(shapes)[-12:])
    if unknown:
        raise UserError(
            f"--feature-maps: no tensor or layer named {', '.join(unknown)}; maps include {valid}"
        )
    if not_maps:
        raise UserError(
            f"--feature-maps: {', '.join(not_maps)} not (N, C, H, W) maps with H·W > 1; "
            f"maps include {valid}"
        )
    return chosen


# --- the command ----------------------------------------------------------------------------------
def main(cfg: ImportConfig) -> Path:
    """Import `cfg.model`; returns the version folder written."""
    check_name(cfg.name)
    if cfg.version is not None and cfg.version < 1:
        raise UserError("--version must be at least 1")
    if cfg.max_batch_size < 1:
        raise UserError("--max-batch-size must be at least 1")
    check_int8_options(
        cfg.int8, cfg.calibration, cfg.calibration_data, cfg.gate_images, cfg.accept_accuracy_loss
    )
    check_repository(cfg.repository, cfg.name)
    model = read_graph(cfg.model)
    precision = graph_precision(model)
    if cfg.int8 and precision != "float32":
        raise UserError(
            f"--int8 quantizes a float32 graph, and {cfg.model} is {precision} already: "
            + (
                "import it without --int8"
                if precision == "int8"
                else "import the float32 graph it was converted from with --int8"
            )
        )
    info = input_info(model)
    original = load_session(cfg.model)
    logits, num_classes = logits_output(original, cfg.logits)
    opset = default_opset(model)
    logger.info(
        "read %s: %s %s, opset %d, %d nodes; input %s (%s, %d, %s, %s), logits %s (%d classes)",
        cfg.model,
        model.producer_name or "unknown producer",
        model.producer_version,
        opset,
        len(model.graph.node),
        info.name,
        info.batch or "batch",
        info.channels,
        info.height or "H",
        info.width or "W",
        logits,
        num_classes,
    )
    pre = resolve_preprocess(cfg.preprocess, info)
    logger.info(
        "preprocessing: %s: %s, resize %d, center crop %d, %s, mean %s, std %s",
        cfg.preprocess,
        pre.color_mode,
        pre.resize,
        pre.center_crop,
        pre.interpolation,
        list(pre.mean),
        list(pre.std),
    )
    labels = class_labels(cfg.labels, num_classes, logits)
    images = parity_images(pre)
    chunk = info.batch or 1  # the original runs at its own batch size
    what = f"{cfg.model} on the sample photos"
    reference = run_or_refuse(original, images, [logits], chunk, what)
    if not np.isfinite(reference[logits]).all():
        raise UserError(
            f"{cfg.model} outputs NaN or infinity in {logits} for the sample photos (preprocessed "
            "as --preprocess says): no class can be read from it"
        )
    output = logits
    logits, reference_logits = served_logits(model, output, reference[logits], images, chunk)
    shapes = intermediate_maps(model, images[np.zeros(chunk, dtype=np.intp)])
    names = layer_names(model)
    maps = choose_feature_maps(model, cfg.feature_maps, shapes, names)
    head = None if cfg.feature_maps == "none" else cam_head(model, logits)  # none: logits only
    if head is not None:
        if shapes.get(head.feature_tensor, (0,))[0] != head.weights.shape[1]:
            head = None
        elif head.feature_tensor not in [m.tensor for m in maps]:
            tensor = head.feature_tensor
            maps.append(FeatureMapChoice(names[tensor], tensor, shapes[tensor]))
            logger.info("feature map %s added: the CAM is computed on it", names[tensor])
    logger.info(
        "feature maps (%s): %s",
        cfg.feature_maps,
        ", ".join(f"{m.layer} {'x'.join(map(str, m.shape))}" for m in maps) or "none",
    )
    if precision == "float16":
        logger.info(
            "the graph computes in float16 (float16 convolution weights): its layers' float16 "
            "outputs are not offered as feature maps or for a CAM, which are served in float32"
        )
    if head is None:
        logger.info("CAM: no global-average-pool + linear head with constant weights")
    else:
        logger.info(
            "CAM: global-average-pool + linear head on %s, weights %s",
            names[head.feature_tensor],
            head.weights.shape,
        )
    taken = tensor_names(model) - {logits}
    clashes = [n for n in [LOGITS_NAME, *(output_name(m.layer) for m in maps)] if n in taken]
    if clashes:
        raise UserError(
            f"the graph already has tensors named {', '.join(clashes)}, the names the served "
            "graph gives its outputs: rename them in the source graph (onnx.compose.add_prefix "
            "renames every tensor)"
        )
    size = pre.center_crop

    def written(batch: int | str) -> onnx.ModelProto:
        return serving_graph(
            model,
            logits=logits,
            num_classes=num_classes,
            maps={m.layer: (m.tensor, m.shape) for m in maps},
            input_shape=(info.channels, size, size),
            batch=batch,
        )

    graph, max_batch_size = decide_batch(written, info, images, cfg.max_batch_size)
    figure = parity_figure(graph, images, reference_logits, maps, batched=max_batch_size > 1)
    plan = int8_plan(cfg, pre, labels, max_batch_size) if cfg.int8 else None
    filters = first_conv_weight(model)
    version = cfg.version or next_version(cfg.repository / cfg.name)
    with publishing(cfg.repository, cfg.name, version, cfg.force) as (staging, target):
        (staging / MODEL_FILE).write_bytes(graph.SerializeToString())
        metadata: dict[str, Any] = {
            "schema_version": 1,
            "name": cfg.name,
            "version": version,
            "architecture": architecture(model, cfg.model),
            "input": {
                "name": info.name,
                "shape": [info.channels, size, size],
                "dtype": "float32",
                "color_mode": pre.color_mode,
            },
            "preprocessing": pre.metadata(),
            "output": {"name": LOGITS_NAME},
            "feature_maps": [
                {"layer": m.layer, "output": output_name(m.layer), "shape": list(m.shape)}
                for m in maps
            ],
            "cam": None,
            "filters": [],
            "labels": labels,
            "max_batch_size": max_batch_size,
            "source": {
                "kind": "onnx",
                "file": cfg.model.name,
                "sha256": sha256_of(cfg.model),
            },
            "export": {
                "opset": opset,
                "producer": {"name": model.producer_name, "version": model.producer_version},
                "ir_version": int(model.ir_version),
                "precision": precision,
                "parity_tolerance": PARITY_TOLERANCE,
                "parity_max_abs_diff": figure,
                "parity_per_output": {LOGITS_NAME: figure},
                "parity_samples": len(images),
                "original_logits": output,
                "batch": "dynamic" if graph_batch(graph) is None else "fixed",
                "sha256": sha256_of(staging / MODEL_FILE),
            },
        }
        if logits != output:
            metadata["export"]["logits_before_softmax"] = logits
        if filters is not None:
            layer, weight = filters
            metadata["filters"] = [write_filters(layer, weight, staging)]
            logger.info("filters: %s %s", layer, weight.shape)
        if head is not None:
            write_cam_weights(head.weights, staging / CAM_FILE)
            fm = output_name(names[head.feature_tensor])
            metadata["cam"] = {"feature_map": fm, "weights": CAM_FILE}
        if plan is not None:
            changes, _ = quantize_version(staging, MODEL_FILE, images, plan, figure)
            metadata["export"] |= {**changes, "sha256": sha256_of(staging / MODEL_FILE)}
        write_metadata(staging, metadata)
    logger.info("wrote %s", target)
    return target


def int8_plan(
    cfg: ImportConfig, pre: Preprocess, labels: list[str], max_batch_size: int
) -> Int8Plan:
    """--int8: calibration and held-out images, disjoint, from --calibration-data or else
    random crops of the sample photos the service bundles (scikit-learn's full-size copies need
    the training extra; these need nothing)."""
    if cfg.calibration_data is not None:
        calibration, held_out = folder_split(
            cfg.calibration_data, cfg.calibration, cfg.gate_images, labels
        )
    else:
        fallback_notice()
        calibration, held_out = photo_split(sample_photos(), cfg.calibration, cfg.gate_images)

    def preprocess(image: Image.Image) -> Images:
        return preprocess_image(image, pre)

    return plan_from_sets(
        calibration,
        held_out,
        preprocess,
        cfg.accept_accuracy_loss,
        max_batch_size=max_batch_size,
    )


def class_labels(choice: str | None, num_classes: int, logits: str) -> list[str]:
    """`--labels`: ImageNet's by default for 1000 classes, else a file is required."""
    if choice is None:
        if num_classes != IMAGENET_CLASSES:
            raise UserError(
                f"the model has {num_classes} classes (output {logits}; --logits picks another): "
                "pass --labels FILE (one label per line)"
            )
        choice = IMAGENET
    labels = resolve_labels(choice, num_classes)
    logger.info("labels: %s (%d)", choice, len(labels))
    return labels


def parity_figure(
    graph: onnx.ModelProto,
    images: npt.NDArray[np.float32],
    reference: npt.NDArray[np.float32],
    maps: list[FeatureMapChoice],
    batched: bool,
) -> float:
    """The written graph's logits against the original's (`reference`) on `images`, all in one
    batch when `batched`; UserError beyond the tolerance or for a map of another shape."""
    try:
        session = ort_session(graph.SerializeToString())
    except ORT_ERRORS as err:
        raise UserError(f"ONNX Runtime cannot load the written graph: {one_line(err)}") from err
    wanted = [LOGITS_NAME, *(output_name(m.layer) for m in maps)]
    chunk = None if batched else 1
    outputs = run_or_refuse(session, images, wanted, chunk, "the written graph")
    for m in maps:
        got = outputs[output_name(m.layer)].shape[1:]
        if got != m.shape:
            raise UserError(f"feature map {m.layer} has shape {got} in the written graph")
    figure = parity_errors({LOGITS_NAME: reference}, outputs)[LOGITS_NAME]
    if not figure <= PARITY_TOLERANCE:  # also catches NaN
        raise UserError(
            f"parity check failed: the written graph's logits differ from the original's by "
            f"{figure:.2e} (tolerance {PARITY_TOLERANCE:g})"
        )
    logger.info(
        "parity: max error %.2e over %d images (tolerance %g)",
        figure,
        len(images),
        PARITY_TOLERANCE,
    )
    return figure


def graph_batch(model: onnx.ModelProto) -> int | None:
    """The input's fixed batch size, None when dynamic."""
    first = (dims(graph_inputs(model)[0]) or [None])[0]
    return first if isinstance(first, int) else None


def decide_batch(
    written: Callable[[int | str], onnx.ModelProto],
    info: InputInfo,
    images: npt.NDArray[np.float32],
    max_batch_size: int,
) -> tuple[onnx.ModelProto, int]:
    """The graph to write and its max_batch_size. A fixed batch of 1 becomes dynamic only when
    a batch of 2 gives, row by row, what each image gives alone; a dynamic graph that fails
    that is served one image at a time."""
    if info.batch is None:
        graph: onnx.ModelProto = written(BATCH_DIM)
        problem = batch_problem(graph, images)
        if problem is None:
            logger.info("batch: dynamic; max_batch_size %d", max_batch_size)
            return graph, max_batch_size
        logger.warning(
            "batch: dynamic in the graph, but a batch of 2 fails (%s): max_batch_size 1", problem
        )
        return graph, 1
    dynamic: onnx.ModelProto = written(BATCH_DIM)
    problem = batch_problem(dynamic, images)
    if problem is None:
        logger.info(
            "batch: fixed at %d in the graph; a batch of 2 matches each image alone: batch axis "
            "made dynamic, max_batch_size %d",
            info.batch,
            max_batch_size,
        )
        return dynamic, max_batch_size
    if info.batch != 1:
        raise UserError(
            f"input {info.name} has a fixed batch of {info.batch} and the graph does not run "
            f"other batch sizes ({problem}); the service sends 1 to max_batch_size images"
        )
    logger.info(
        "batch: fixed at 1 in the graph; a batch of 2 fails (%s): kept fixed, max_batch_size 1",
        problem,
    )
    return written(1), 1


def architecture(model: onnx.ModelProto, path: Path) -> str:
    """`onnx:<file stem>` and who made the graph, e.g. `onnx:resnet18 (pytorch 2.5.1)`."""
    producer = " ".join(p for p in (model.producer_name, model.producer_version) if p)
    return f"onnx:{path.stem}" + (f" ({producer})" if producer else "")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__,
        prog="python -m training.import_onnx",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = ImportConfig(Path(), "")
    p.add_argument("model", type=Path, help="the ONNX file")
    p.add_argument("--name", required=True, help=f"model name, {NAME_PATTERN}")
    p.add_argument("--repository", type=Path, default=d.repository)
    p.add_argument("--version", type=positive_int, help="default: one above the highest existing")
    p.add_argument("--force", action="store_true", help="overwrite an existing version")
    p.add_argument(
        "--labels",
        help="imagenet (the default for 1000 classes) or a file with one label per line",
    )
    p.add_argument(
        "--logits",
        help="the output that holds the logits (default: the first of shape (N, classes))",
    )
    p.add_argument(
        "--preprocess",
        default=d.preprocess,
        help="imagenet, or a JSON file with resize, center_crop, mean, std and optionally "
        "interpolation and color_mode",
    )
    p.add_argument(
        "--feature-maps",
        default=d.feature_maps,
        help=f"auto (the last map at each resolution) | all (conv/pool/activation outputs, at "
        f"most {MAX_ALL_FEATURE_MAPS}) | none | comma-separated tensor names",
    )
    p.add_argument(
        "--max-batch-size",
        type=positive_int,
        default=d.max_batch_size,
        help="largest batch the service sends (1 where the batch axis cannot be dynamic)",
    )
    add_int8_arguments(
        p,
        gate="top-1 agreement with float32 is at least 99%% (and, where the held-out images "
        "are labelled, accuracy drops at most 1 percentage point)",
        data="imagefolder:PATH: calibrate on its images and compare on others (PATH/train and "
        "PATH/val or PATH/test where they exist); default: crops of the bundled photos",
        gate_images=f"all of PATH/val, else {DEFAULT_EVALUATION_IMAGES}",
    )
    return p


def cli(argv: list[str] | None = None) -> None:
    main(ImportConfig(**vars(get_args_parser().parse_args(argv))))


if __name__ == "__main__":
    sys.exit(run_cli(cli))
