"""Opt-in INT8 export (`training.export --int8`, `training.import_onnx --int8`): the float32 graph
statically quantized with ONNX Runtime's own tooling, kept only when an accuracy gate passes.

1. `onnxruntime.quantization.shape_inference.quant_pre_process` folds and fuses the float32 graph
   (ONNX shape inference; symbolic shape inference, which needs sympy, adds nothing for CNNs).
   A strided conv over at most 4 input channels, an RGB stem, is then recast as SpaceToDepth
   and a stride-1 conv over the blocks (`training.onnx_graph.space_to_depth_stems`): the same
   float32 function, and in int8 a ResNet-18 stem in half the time.
2. `onnxruntime.quantization.quantize_static` calibrates activation ranges (MinMax) on the
   calibration images and writes a QDQ graph: uint8 activations, int8 weights per output channel.
   QDQ rather than QOperator: on this project's CPU both run equally fast (ONNX Runtime fuses
   QuantizeLinear → Conv → DequantizeLinear into QLinearConv when it loads the graph), and only QDQ
   also runs on the CUDA and TensorRT providers. uint8 rather than int8 activations: ONNX
   Runtime's x86 kernels take the VNNI fast path for uint8 × int8 only; int8 × int8 ran no faster
   than float32 (docs/training.md, "INT8 export").
   The weights' zero point is then chosen by timing on this CPU (`choose_weight_zero_point`).
3. The gate: on held-out images, never the calibration ones, the float32 and the int8 graph are
   compared: top-1 agreement at least `MIN_AGREEMENT` and, where the images have labels, an
   accuracy drop of at most `MAX_ACCURACY_DROP`; otherwise the export refuses (one `UserError`)
   unless the loss is accepted explicitly.

The input, `logits` and every `fm.<layer>` output stay float32 (DequantizeLinear before each), so
the service, clients and metadata see no change but `export.precision: "int8"`.

No torch: `training.import_onnx` uses this with the service extra alone (onnx, onnxruntime,
numpy, Pillow); the calibration progress bar is drawn where tqdm is installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnx.version_converter
import onnxruntime as ort
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image, ImageOps

from service.runtime import ORT_ERRORS
from training.cli import positive_int
from training.data.images import load_image
from training.errors import UserError
from training.onnx_check import (
    LOGITS_NAME,
    ort_session,
    parity_errors,
    run_rows,
)
from training.onnx_graph import default_opset, space_to_depth_stems

logger = logging.getLogger(__name__)
DEFAULT_CALIBRATION_IMAGES = 256
# Held-out images the gate compares on without a test split or val/ folder (photo crops, the
# rest of a flat image folder); `--gate-images` chooses.
DEFAULT_EVALUATION_IMAGES = 256
# QDQ with per-channel weights: DequantizeLinear's `axis` exists from opset 13 on.
MIN_QDQ_OPSET = 13
MIN_AGREEMENT = 0.99  # top-1 of int8 equal to float32's on at least 99 % of held-out images
MAX_ACCURACY_DROP = 0.01  # and test accuracy at most 1 percentage point lower
CALIBRATION_BATCH_SIZE = 16
EVALUATION_BATCH_SIZE = 64
PROGRESS_DELAY_S = 2.0  # draw a bar only for steps that take longer
IMAGEFOLDER_PREFIX = "imagefolder:"
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}
)
SPLIT_SEED = 0
# Random crops of the bundled photos: each side at least this fraction of the photo's.
MIN_CROP_FRACTION = 0.3
QUANTIZATION = {
    "tool": "onnxruntime.quantization.quantize_static",
    "format": "QDQ",
    "activations": "uint8, per tensor",
    "weights": "int8, per channel",
    "calibrate_method": "MinMax",
}
# ONNX Runtime's x86 QLinearConv has two kernels: weights whose zero point is 0 (symmetric, as
# quantize_static writes per-channel int8 weights) run in a conv kernel of their own, any other
# zero point through im2col and the int8 GEMM, which uses AMX where the CPU has it. The same
# weights one lower with zero point -1 ([-127, 127] -> [-128, 126]) dequantize to the same
# floats and take the GEMM; the export times both forms on its CPU and keeps the shifted one
# only when it runs at least SHIFT_MIN_GAIN x as fast.
SHIFTED_ZERO_POINT = -1
SHIFT_MIN_GAIN = 1.05
TIMING_ROUNDS = 7  # best of, both forms interleaved
TIMING_BATCHES = (1, 8)
# A BatchNormalization that could not be folded into its conv (the conv's output is a feature
# map) has rank-1 scales: one per channel along axis 0, not the default axis 1 of conv weights.
EXTRA_OPTIONS = {"QDQOpTypePerChannelSupportToAxis": {"BatchNormalization": 0}}
Images = npt.NDArray[np.float32]  # (N, C, H, W), preprocessed as the service does
Labels = npt.NDArray[np.int64]  # (N,) class indices
Preprocess = Callable[[Image.Image], Images]  # one PIL image -> (C, H, W)


@dataclass(frozen=True)
class ImageSet:
    """Images for calibration or for the gate, read when needed: files or in-memory views, with
    class indices where the source knows them in the model's labels."""

    description: str
    items: Sequence[Path | Image.Image]
    labels: Sequence[int] | None = None

    def __len__(self) -> int:
        return len(self.items)

    def image(self, index: int) -> Image.Image:
        item = self.items[index]
        if isinstance(item, Image.Image):
            return item
        return load_image(item, "calibration data")

    def batches(self, preprocess: Preprocess, batch_size: int) -> Iterator[tuple[Images, Labels]]:
        """(images, labels) in order; labels are -1 where unknown."""
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            images = np.stack([preprocess(self.image(i)) for i in range(start, stop)])
            known = self.labels[start:stop] if self.labels is not None else [-1] * (stop - start)
            yield images.astype(np.float32), np.asarray(known, dtype=np.int64)


@dataclass(frozen=True)
class Int8Plan:
    """Where calibration and the gate's held-out images come from.

    `calibration()` yields image batches (`calibration_count` images in all); `evaluation()`
    yields (images, labels) batches, labels -1 where unknown (agreement only).
    """

    calibration: Callable[[], Iterable[Images]]
    calibration_count: int
    calibration_source: str
    evaluation: Callable[[], Iterable[tuple[Images, Labels]]]
    evaluation_source: str
    evaluation_count: int | None = None  # for the progress bar
    accept_accuracy_loss: bool = False
    threads: int | None = None
    max_batch_size: int | None = None  # a graph that runs only this many images at a time


@dataclass(frozen=True)
class Comparison:
    """float32 against int8 on the gate's held-out images."""

    images: int
    agreement: float
    accuracy_float32: float | None = None
    accuracy_int8: float | None = None
    logits_max_abs_diff: float = 0.0

    @property
    def accuracy_drop(self) -> float | None:
        if self.accuracy_float32 is None or self.accuracy_int8 is None:
            return None
        return self.accuracy_float32 - self.accuracy_int8

    def problems(self) -> list[str]:
        """Why the gate refuses; empty when it passes (NaN figures fail)."""
        found = []
        if not self.agreement >= MIN_AGREEMENT:
            found.append(f"top-1 agreement {self.agreement:.2%} < {MIN_AGREEMENT:.0%}")
        drop = self.accuracy_drop
        if drop is not None and not drop <= MAX_ACCURACY_DROP:
            found.append(
                f"accuracy {self.accuracy_float32:.4f} -> {self.accuracy_int8:.4f}, a drop of "
                f"{100 * drop:.2f} > {100 * MAX_ACCURACY_DROP:g} percentage points"
            )
        return found

    def describe(self) -> str:
        text = f"top-1 agreement {self.agreement:.2%}"
        if self.accuracy_float32 is not None and self.accuracy_int8 is not None:
            text += f", accuracy float32 {self.accuracy_float32:.4f} int8 {self.accuracy_int8:.4f}"
        return text


class Progress:
    """A tqdm bar once a step has run `PROGRESS_DELAY_S`; nothing where tqdm is not installed."""

    def __init__(self, total: int, desc: str) -> None:
        self.bar: Any = None
        if importlib.util.find_spec("tqdm") is not None:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="img", delay=PROGRESS_DELAY_S, leave=False)

    def update(self, count: int) -> None:
        if self.bar is not None:
            self.bar.update(count)

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        err: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self.bar is not None:
            self.bar.close()


class BatchReader(CalibrationDataReader):  # type: ignore[misc]  # onnxruntime is untyped
    """Feeds calibration batches to `quantize_static`, advancing the progress bar."""

    def __init__(self, input_name: str, batches: Iterable[Images], progress: Progress) -> None:
        self.input_name = input_name
        self.batches = iter(batches)
        self.progress = progress
        self.seen = 0

    def get_next(self) -> dict[str, Images] | None:
        batch = next(self.batches, None)
        if batch is None:
            return None
        self.seen += len(batch)
        self.progress.update(len(batch))
        return {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)}


def at_qdq_opset(model: onnx.ModelProto, source: Path, converted: Path) -> Path:
    """`source` itself when its opset carries per-channel QDQ, else `model` converted to
    MIN_QDQ_OPSET at `converted` (UserError when ONNX cannot convert it)."""
    opset = default_opset(model)
    if opset >= MIN_QDQ_OPSET:
        return source
    try:
        upgraded = onnx.version_converter.convert_version(model, MIN_QDQ_OPSET)
        onnx.checker.check_model(upgraded)
    except Exception as err:  # noqa: BLE001 - the converter raises many kinds, all one answer
        message = " ".join(str(err).split()) or type(err).__name__
        raise UserError(
            f"int8 needs opset {MIN_QDQ_OPSET} or later (per-channel DequantizeLinear); this "
            f"graph is opset {opset} and ONNX could not convert it: {message}"
        ) from err
    logger.info("int8: graph converted from opset %d to %d for quantization", opset, MIN_QDQ_OPSET)
    onnx.save_model(upgraded, str(converted))
    return converted


def quantize_model(source: Path, target: Path, plan: Int8Plan) -> tuple[int, list[str]]:
    """Write the int8 QDQ graph of the float32 graph `source` to `target`; returns the number
    of calibration images it was calibrated on and the weights of the stems recast as
    SpaceToDepth + conv (`space_to_depth_stems`)."""
    model = onnx.load(str(source), load_external_data=False)
    constants = {t.name for t in model.graph.initializer}  # older graphs list weights as inputs
    input_name = next(i.name for i in model.graph.input if i.name not in constants)
    with tempfile.TemporaryDirectory(prefix="convserve-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        source = at_qdq_opset(model, source, Path(tmp) / "opset.onnx")
        try:
            quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
            stems = recast_stems(prepared)
            with Progress(plan.calibration_count, "calibrating") as progress:
                reader = BatchReader(input_name, plan.calibration(), progress)
                quantize_static(
                    str(prepared),
                    str(target),
                    reader,
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options=EXTRA_OPTIONS,
                )
        except ORT_ERRORS as err:
            message = " ".join(str(err).split())
            raise UserError(f"int8 quantization failed: {message}") from err
    if reader.seen == 0:
        raise UserError("int8 quantization: no calibration images")
    return reader.seen, stems


def recast_stems(path: Path) -> list[str]:
    """`space_to_depth_stems` on the graph at `path`, saved back where it changed anything."""
    model = onnx.load(str(path))
    stems = space_to_depth_stems(model)
    if stems:
        logger.info("int8: %s recast as SpaceToDepth + conv", ", ".join(stems))
        onnx.save_model(model, str(path))
    return stems


def shift_weight_zero_points(model: onnx.ModelProto) -> int:
    """Give every symmetric int8 weight (a DequantizeLinear of a rank >= 2 int8 initializer with
    zero points 0 and no -128, neither shared with another node) zero point SHIFTED_ZERO_POINT
    and values shifted by as much, in place: each dequantizes to the same float as before.
    Returns how many were shifted."""
    initializers = {t.name: t for t in model.graph.initializer}
    uses = Counter(name for node in model.graph.node for name in node.input)
    shifted = 0
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 3:
            continue
        weight, zero = initializers.get(node.input[0]), initializers.get(node.input[2])
        if weight is None or zero is None or weight.data_type != onnx.TensorProto.INT8:
            continue
        if uses[weight.name] > 1 or uses[zero.name] > 1:  # shared: shifting one shifts another
            continue
        values, zeros = numpy_helper.to_array(weight), numpy_helper.to_array(zero)
        if values.ndim < 2 or zeros.any() or values.min() < -127:
            continue
        weight.CopyFrom(numpy_helper.from_array(values - np.int8(1), weight.name))
        zero.CopyFrom(numpy_helper.from_array(np.full_like(zeros, SHIFTED_ZERO_POINT), zero.name))
        shifted += 1
    return shifted


def seconds_per_image(
    models: Sequence[Path | bytes], images: Images, batches: Sequence[int]
) -> list[float]:
    """Per graph (a file or a serialized model): the sum over `batches` of its best time per
    image, one intra-op thread as the service runs an instance, the graphs' runs interleaved so
    that other work on the host slows each alike."""
    sessions = [ort_session(model, threads=1) for model in models]
    name = sessions[0].get_inputs()[0].name
    feeds = [{name: np.resize(images, (batch, *images.shape[1:]))} for batch in batches]
    best = [[float("inf")] * len(batches) for _ in sessions]
    for _ in range(TIMING_ROUNDS):
        for index, session in enumerate(sessions):
            for slot, feed in enumerate(feeds):
                start = time.perf_counter()
                session.run([LOGITS_NAME], feed)
                best[index][slot] = min(best[index][slot], time.perf_counter() - start)
    return [sum(t / b for t, b in zip(times, batches, strict=True)) for times in best]


def choose_weight_zero_point(path: Path, images: Images, max_batch: int | None) -> dict[str, Any]:
    """Time the int8 graph at `path` against its `shift_weight_zero_points` form on `images`
    and keep the faster (the shifted one only by SHIFT_MIN_GAIN); what was chosen and the two
    timings, for metadata."""
    model = onnx.load(str(path))
    if shift_weight_zero_points(model) == 0:
        return {"weight_zero_point": 0}
    batches = sorted({min(b, max_batch or b) for b in TIMING_BATCHES})
    logger.info(
        "int8: timing the weights with zero point 0 and %d (batches %s, best of %d)",
        SHIFTED_ZERO_POINT, ", ".join(map(str, batches)), TIMING_ROUNDS,
    )  # fmt: skip
    zero, moved = seconds_per_image([path, model.SerializeToString()], images, batches)
    gain = zero / moved
    chosen = SHIFTED_ZERO_POINT if gain >= SHIFT_MIN_GAIN else 0
    if chosen:
        onnx.save_model(model, str(path))
    logger.info(
        "int8: weights with zero point %d ran %.2fx as fast as with 0 here; zero point %d kept",
        SHIFTED_ZERO_POINT, gain, chosen,
    )  # fmt: skip
    return {
        "weight_zero_point": chosen,
        "weight_zero_point_timing": {
            "batches": batches,
            "ms_per_image_zero_point_0": round(1000 * zero, 4),
            f"ms_per_image_zero_point_{SHIFTED_ZERO_POINT}": round(1000 * moved, 4),
        },
    }


def compare(
    float32: ort.InferenceSession,
    int8: ort.InferenceSession,
    batches: Iterable[tuple[Images, Labels]],
    total: int | None = None,
    chunk: int | None = None,
) -> Comparison:
    """Top-1 agreement of the two graphs on `batches` and, where every image has a label
    (>= 0), the accuracy of each."""
    count = agree = labelled = right32 = right8 = 0
    worst = 0.0
    with Progress(total or 0, "int8 vs float32") as progress:
        for images, labels in batches:
            reference = run_rows(float32, images, [LOGITS_NAME], chunk)
            got = run_rows(int8, images, [LOGITS_NAME], chunk)
            worst = max(worst, parity_errors(reference, got)[LOGITS_NAME])
            top32 = reference[LOGITS_NAME].argmax(axis=1)
            top8 = got[LOGITS_NAME].argmax(axis=1)
            known = labels >= 0
            count += len(images)
            agree += int((top32 == top8).sum())
            labelled += int(known.sum())
            right32 += int((top32 == labels)[known].sum())
            right8 += int((top8 == labels)[known].sum())
            progress.update(len(images))
    if count == 0:
        raise UserError("int8 accuracy gate: no held-out images to compare on")
    # Accuracy only where every image has a label: a partly labelled set measures nothing whole.
    every = labelled == count
    return Comparison(
        images=count,
        agreement=agree / count,
        accuracy_float32=right32 / count if every else None,
        accuracy_int8=right8 / count if every else None,
        logits_max_abs_diff=worst,
    )


def quantize_version(
    folder: Path, model_file: str, parity_images: Images, plan: Int8Plan, float32_parity: float
) -> tuple[dict[str, Any], Comparison]:
    """Replace `folder/model_file` (float32) by its int8 graph if the gate passes.

    Returns the metadata `export` fields that change (precision, opset, parity against the float32
    graph on `parity_images`, `quantization` with `float32_parity`, the float32 graph's own parity
    figure) and the comparison; raises `UserError` when the gate refuses and the loss is not
    accepted (the caller discards the folder).
    """
    path = folder / model_file
    with tempfile.TemporaryDirectory(prefix="convserve-float32-") as tmp:
        float_path = Path(tmp) / model_file
        shutil.move(path, float_path)
        logger.info(
            "int8: calibrating on %d images (%s)", plan.calibration_count, plan.calibration_source
        )
        calibrated, stems = quantize_model(float_path, path, plan)
        zero_point = choose_weight_zero_point(path, parity_images, plan.max_batch_size)
        float32 = ort_session(float_path, plan.threads)
        int8 = ort_session(path, plan.threads)
        check_outputs(float32, int8)
        chunk = plan.max_batch_size
        parity = parity_errors(
            run_rows(float32, parity_images, chunk=chunk),
            run_rows(int8, parity_images, chunk=chunk),
        )
        comparison = compare(float32, int8, plan.evaluation(), plan.evaluation_count, chunk)
    report = (
        f"int8 against float32 on {comparison.images} held-out images "
        f"({plan.evaluation_source}): {comparison.describe()}"
    )
    problems = comparison.problems()
    if problems and not plan.accept_accuracy_loss:
        raise UserError(
            f"int8 accuracy gate refused: {'; '.join(problems)} on {comparison.images} held-out "
            f"images ({plan.evaluation_source}); nothing written (pass --accept-accuracy-loss to "
            "write it anyway)"
        )
    if problems:
        logger.warning(
            "%s; written anyway (--accept-accuracy-loss): %s", report, "; ".join(problems)
        )
    else:
        logger.info("%s", report)
    drop = comparison.accuracy_drop
    quantization: dict[str, Any] = {
        **QUANTIZATION,
        "onnxruntime": ort.__version__,
        "calibration": {"source": plan.calibration_source, "images": calibrated},
        "space_to_depth": stems,
        **zero_point,
        "evaluation": {"source": plan.evaluation_source, "images": comparison.images},
        "top1_agreement": round(comparison.agreement, 6),
        **(
            {
                "accuracy_float32": round(comparison.accuracy_float32, 6),
                "accuracy_int8": round(comparison.accuracy_int8, 6),
                "accuracy_drop_pp": round(100 * drop, 4),
            }
            if comparison.accuracy_float32 is not None
            and comparison.accuracy_int8 is not None
            and drop is not None
            else {}
        ),
        "logits_max_abs_diff": comparison.logits_max_abs_diff,
        "float32_parity_max_abs_diff": float32_parity,
        "gate": {
            "min_top1_agreement": MIN_AGREEMENT,
            "max_accuracy_drop_pp": 100 * MAX_ACCURACY_DROP,
            "passed": not problems,
        },
    }
    export = {
        "precision": "int8",
        "opset": default_opset(onnx.load(str(path), load_external_data=False)),
        "parity_reference": "float32 graph",
        "parity_tolerance": None,
        "parity_max_abs_diff": max(parity.values()),
        "parity_per_output": parity,
        "quantization": quantization,
    }
    return export, comparison


def check_outputs(float32: ort.InferenceSession, int8: ort.InferenceSession) -> None:
    """The int8 graph keeps the float32 graph's input and outputs: names, order, float32."""
    want = [(o.name, o.type) for o in float32.get_outputs()]
    got = [(o.name, o.type) for o in int8.get_outputs()]
    inputs = [(i.name, i.type) for i in int8.get_inputs()]
    if got != want or inputs != [(i.name, i.type) for i in float32.get_inputs()]:
        raise UserError(f"the int8 graph changed the inputs or outputs: {inputs} -> {got}")


def add_int8_arguments(
    parser: argparse.ArgumentParser, *, gate: str, data: str, gate_images: str
) -> None:
    """The int8 options of `training.export` and `training.import_onnx`; the help texts that
    differ between them say what the gate compares (`gate`), where calibration images come from
    (`data`) and the gate's default image count (`gate_images`)."""
    int8 = parser.add_argument_group("int8 (statically quantized with ONNX Runtime, for CPUs)")
    int8.add_argument(
        "--int8",
        action="store_true",
        help="uint8 activations and int8 per-channel weights (inputs and outputs stay float32); "
        f"written only when {gate}",
    )
    int8.add_argument(
        "--calibration",
        type=positive_int,
        default=DEFAULT_CALIBRATION_IMAGES,
        help="images to calibrate activation ranges on",
    )
    int8.add_argument("--calibration-data", help=data)
    int8.add_argument(
        "--gate-images",
        type=positive_int,
        help="held-out images the accuracy gate compares float32 and int8 on (default: "
        f"{gate_images})",
    )
    int8.add_argument(
        "--accept-accuracy-loss",
        action="store_true",
        help="write the int8 version even when the accuracy gate refuses it",
    )


def check_int8_options(
    int8: bool,
    calibration: int,
    calibration_data: str | None,
    gate_images: int | None,
    accept_accuracy_loss: bool,
) -> None:
    """The --int8 options of both commands: none without --int8, counts at least 1."""
    given = [
        flag
        for flag, on in (
            ("--calibration", calibration != DEFAULT_CALIBRATION_IMAGES),
            ("--calibration-data", calibration_data is not None),
            ("--gate-images", gate_images is not None),
            ("--accept-accuracy-loss", accept_accuracy_loss),
        )
        if on
    ]
    if given and not int8:
        raise UserError(f"{', '.join(given)} {'goes' if len(given) == 1 else 'go'} with --int8")
    if calibration < 1 or (gate_images is not None and gate_images < 1):
        raise UserError("--calibration and --gate-images must be at least 1")


# --- calibration and held-out images without a training set -----------------------------------
def folder_of(spec: str) -> Path:
    """`imagefolder:PATH` → PATH, a directory."""
    if not spec.startswith(IMAGEFOLDER_PREFIX) or not spec.removeprefix(IMAGEFOLDER_PREFIX):
        raise UserError(f"--calibration-data {spec!r}: expected {IMAGEFOLDER_PREFIX}PATH")
    path = Path(spec.removeprefix(IMAGEFOLDER_PREFIX)).expanduser()
    if not path.is_dir():
        raise UserError(f"--calibration-data {spec}: {path} is not a directory")
    return path


def image_files(root: Path, exclude: Collection[Path] = frozenset()) -> list[Path]:
    """The images below `root`, sorted; those in `exclude` (resolved paths) left out, with a
    line saying how many."""
    found = sorted(
        p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
    )
    kept = [p for p in found if p.resolve() not in exclude] if exclude else found
    if len(kept) < len(found):
        logger.info(
            "%s: %d of its %d images are held out for the accuracy gate: not calibrated on",
            root,
            len(found) - len(kept),
            len(found),
        )
    return kept


def with_labels(
    description: str, root: Path, files: Sequence[Path], labels: Sequence[str]
) -> ImageSet:
    """`files` with a class index each where its class folder (first folder below `root`) is
    one of the model's `labels`; without labels unless every file has one."""
    index = {label: i for i, label in enumerate(labels)}
    classes = [
        index.get(f.relative_to(root).parts[0]) if len(f.relative_to(root).parts) > 1 else None
        for f in files
    ]
    known = [c for c in classes if c is not None]
    return ImageSet(description, list(files), known if len(known) == len(files) else None)


def folder_split(
    spec: str,
    calibration: int,
    evaluation: int | None,
    labels: Sequence[str],
    exclude: Collection[Path] = frozenset(),
) -> tuple[ImageSet, ImageSet]:
    """Calibration and held-out images from `imagefolder:PATH`, disjoint, none of them in
    `exclude` (resolved paths: held-out images from elsewhere, e.g. a checkpoint's test split).

    Where PATH/train and PATH/val (or PATH/test) exist: `calibration` images of train/, a fixed
    random choice, and `evaluation` of val/ (None: all of them). Otherwise one fixed shuffle of
    every image below PATH: its first `calibration` images, then the next `evaluation` (None:
    `DEFAULT_EVALUATION_IMAGES`).
    """
    root = folder_of(spec)
    rng = np.random.default_rng(SPLIT_SEED)
    train = root / "train"
    held = next((root / s for s in ("val", "test") if (root / s).is_dir()), None)
    if train.is_dir() and held is not None:
        calib_files, eval_files = image_files(train, exclude), image_files(held, exclude)
        calib = [calib_files[i] for i in rng.permutation(len(calib_files))[:calibration]]
        picked = [eval_files[i] for i in sorted(rng.permutation(len(eval_files))[:evaluation])]
        if not calib:
            raise UserError(f"--calibration-data {spec}: no images in {train}")
        return (
            ImageSet(f"{spec} train/, {len(calib)} of {len(calib_files)}", calib),
            with_labels(
                f"{spec} {held.name}/, {len(picked)} of {len(eval_files)}", held, picked, labels
            ),
        )
    files = image_files(root, exclude)
    order = rng.permutation(len(files))
    stop = calibration + (DEFAULT_EVALUATION_IMAGES if evaluation is None else evaluation)
    calib = [files[i] for i in order[:calibration]]
    picked = [files[i] for i in order[calibration:stop]]
    if not calib:
        raise UserError(f"--calibration-data {spec}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    return (
        ImageSet(f"{spec}, shuffled: the first {len(calib)}", calib),
        with_labels(f"{spec}, shuffled: the next {len(picked)}", root, picked, labels),
    )


def photo_split(
    photos: Sequence[Image.Image], calibration: int, evaluation: int | None
) -> tuple[ImageSet, ImageSet]:
    """Random crops (and their mirror images) of the bundled photos: the first `calibration`
    to calibrate, the next `evaluation` for the gate; every crop box differs."""
    evaluation = DEFAULT_EVALUATION_IMAGES if evaluation is None else evaluation
    rng = np.random.default_rng(SPLIT_SEED)
    views: list[Image.Image] = []
    boxes: set[tuple[int, int, int, int, int, bool]] = set()
    while len(views) < calibration + evaluation:
        which = int(rng.integers(len(photos)))
        photo = photos[which]
        width, height = photo.size
        crop_w = int(width * rng.uniform(MIN_CROP_FRACTION, 1.0))
        crop_h = int(height * rng.uniform(MIN_CROP_FRACTION, 1.0))
        left = int(rng.integers(0, width - crop_w + 1))
        upper = int(rng.integers(0, height - crop_h + 1))
        mirrored = bool(rng.integers(2))
        key = (which, left, upper, crop_w, crop_h, mirrored)
        if key in boxes:
            continue
        boxes.add(key)
        view = photo.crop((left, upper, left + crop_w, upper + crop_h))
        views.append(ImageOps.mirror(view) if mirrored else view)
    what = f"random crops of the bundled photos, seed {SPLIT_SEED}"
    return (
        ImageSet(f"{what}: the first {calibration}", views[:calibration]),
        ImageSet(f"{what}: the next {evaluation}", views[calibration:]),
    )


def plan_from_sets(
    calibration: ImageSet,
    evaluation: ImageSet,
    preprocess: Preprocess,
    accept_accuracy_loss: bool,
    threads: int | None = None,
    max_batch_size: int | None = None,
) -> Int8Plan:
    """The plan for images that are not a training set's (photos, an image folder)."""
    if len(evaluation) == 0:
        raise UserError(
            f"{evaluation.description}: no images left to compare float32 and int8 on; give the "
            "folder train/ and val/ subfolders, more images, or a smaller --calibration"
        )

    calibration_batch = min(CALIBRATION_BATCH_SIZE, max_batch_size or CALIBRATION_BATCH_SIZE)

    def calibrate() -> Iterator[Images]:
        return (images for images, _ in calibration.batches(preprocess, calibration_batch))

    def evaluate() -> Iterator[tuple[Images, Labels]]:
        return evaluation.batches(preprocess, EVALUATION_BATCH_SIZE)

    return Int8Plan(
        calibration=calibrate,
        calibration_count=len(calibration),
        calibration_source=calibration.description,
        evaluation=evaluate,
        evaluation_source=evaluation.description
        + (", labelled" if evaluation.labels is not None else ""),
        evaluation_count=len(evaluation),
        accept_accuracy_loss=accept_accuracy_loss,
        threads=threads,
        max_batch_size=max_batch_size,
    )


def fallback_notice() -> None:
    logger.warning(
        "int8: no --calibration-data: calibrating on random crops of the bundled photos and "
        "comparing on other crops; pass --calibration-data imagefolder:PATH with images like the "
        "model's inputs for a representative calibration"
    )
