"""Decode + preprocessing, stage by stage: a naive pipeline and the service's, same run.

    .venv/bin/python bench/preprocess.py [--repeat 50]

Images: scikit-learn's china.jpg and flower.jpg (640x427 JPEGs) and a 4000x3000 JPEG made from
china.jpg (upscaled, quality 90: `bench.models.phone_photo`), through a ResNet's preprocessing (RGB,
resize 256, crop 224, ImageNet mean/std); a 28x28 Fashion-MNIST PNG through lenet5-fashion's.

Three pipelines run interleaved, iteration by iteration, so that other load on the host falls on
all of them alike: "before" (a naive pipeline with the same result: `ImageOps.exif_transpose` and
`convert` copying the image even when they change nothing, float arithmetic over the whole crop),
"exact" (`jpeg_draft=False`, bit-exact with torchvision) and "draft" (`jpeg_draft=True`, the
default; the same as "exact" on images too small to draft). Each is timed stage by stage with
`time.perf_counter` ("total": their sum, intermediates kept to the end) and as one unstaged call
("call": each intermediate freed as soon as the next stage has it, as in `preprocess`; freeing
and re-allocating decoded images is part of the cost), medians in ms; "x before" is each call's
ratio to the "before" call. The staged pipelines are checked against
`service.preprocess.preprocess` first, so the stages time what the service runs.

    .venv/bin/python bench/preprocess.py --draft-cost

What draft decoding costs and saves on the benchmark's photos (`draft_cost`, also recorded by
`bench/compare.py`): the 640x427 china.jpg and its 4000x3000 upscale through a ResNet's
preprocessing, exact against draft: max and mean |difference| of the model input in 8-bit levels,
and the median decode + preprocessing ms of each, so that DRAFT_MIN_RATIO can be chosen by
measurement.

    .venv/bin/python bench/preprocess.py --tolerance

How far draft decoding moves the model input from the exact one, on real photos made large
enough to be drafted: china.jpg and flower.jpg upscaled (smooth: little detail per pixel) and
mosaics of the native 640x427 photos (real detail at every pixel), with the shorter side where
the draft lands exactly on DRAFT_MIN_RATIO x resize (the worst case) and above it. Differences
are in 8-bit levels (|delta input| x std x 255); for scale, the same photo re-encoded at JPEG
quality 95 and preprocessed exactly. Then top-1 agreement: lenet5-fashion (trained) on
Fashion-MNIST test images upscaled to 280, 560 and 448 pixels square (JPEG), and the
random-weight ResNet-18 of bench/models.py (a sanity check only) where it has been exported.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.models import BENCH_REPOSITORY, fashion_png, phone_photo, photo_path  # noqa: E402
from service.metadata import ModelMetadata  # noqa: E402
from service.preprocess import (  # noqa: E402
    DRAFT_MIN_RATIO,
    RESAMPLE,
    Extent,
    _convert,
    _draft,
    _load,
    _open,
    _orient,
    center_crop,
    draft_scale,
    preprocess,
    resize_size,
    to_input,
)

LARGE_QUALITY = 90
MAX_PIXELS = 40_000_000
# The first two drafted to exactly DRAFT_MIN_RATIO x 256 (at 1/2 and 1/4, the worst cases), then
# a 12 MP phone photo's and a larger one's.
TOLERANCE_SHORT_SIDES = (
    round(DRAFT_MIN_RATIO * 256 * 2),
    round(DRAFT_MIN_RATIO * 256 * 4),
    3024,
    4000,
)
MOSAIC_TILE = (640, 427)
# Fashion-MNIST as product photos; the first two drafted to exactly DRAFT_MIN_RATIO x 28.
FASHION_SIDES = (round(DRAFT_MIN_RATIO * 28 * 4), round(DRAFT_MIN_RATIO * 28 * 8), 448)
FASHION_IMAGES = 1000
REENCODE_QUALITY = 95
STAGES = ("open", "decode", "orient", "convert", "resize", "crop", "to-input", "release")
Stage = Callable[[Any], Any]


@dataclass
class Header:
    """What the decode stage learns and later stages use."""

    size: tuple[int, int] = (0, 0)
    extent: Extent | None = None
    transpose: Image.Transpose | None = None


@dataclass(frozen=True)
class Case:
    name: str
    data: bytes
    metadata: ModelMetadata


def model_metadata(name: str, color_mode: str, resize: int, crop: int) -> ModelMetadata:
    grey = color_mode == "L"
    return ModelMetadata.model_validate(
        {
            "name": name,
            "version": 1,
            "architecture": name,
            "input": {
                "name": "input",
                "shape": [1 if grey else 3, crop, crop],
                "dtype": "float32",
                "color_mode": color_mode,
            },
            "preprocessing": {
                "resize": resize,
                "center_crop": crop,
                "interpolation": "bilinear",
                "mean": [0.286] if grey else [0.485, 0.456, 0.406],
                "std": [0.353] if grey else [0.229, 0.224, 0.225],
            },
            "output": {"name": "logits"},
            "labels": ["a", "b"],
            "max_batch_size": 1,
            "export": {"opset": 18, "torch": "-", "parity_max_abs_diff": 0.0, "sha256": "0" * 64},
        }
    )


def cases() -> list[Case]:
    resnet = model_metadata("resnet18", "RGB", 256, 224)
    lenet = model_metadata("lenet5-fashion", "L", 28, 28)
    return [
        Case("china.jpg 640x427", photo_path("china.jpg").read_bytes(), resnet),
        Case("flower.jpg 640x427", photo_path("flower.jpg").read_bytes(), resnet),
        Case("china 4000x3000 q90", phone_photo(), resnet),
        Case("fashion 28x28 PNG", fashion_png(), lenet),
    ]


def draft_cost(data: bytes, repeat: int = 20) -> dict[str, Any]:
    """Exact against draft decoding of one JPEG through a ResNet's preprocessing (resize 256,
    crop 224): the DCT scale, |input difference| in 8-bit levels (max, mean) and the median ms
    of each decode + preprocessing, interleaved."""
    meta = model_metadata("resnet18", "RGB", 256, 224)
    spec = meta.preprocessing

    def run(draft: bool) -> npt.NDArray[np.float32]:
        return preprocess(data, meta, max_pixels=MAX_PIXELS, jpeg_draft=draft)

    difference = levels(run(True), run(False), spec.std)
    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(repeat):
        for draft, samples in times.items():
            started = time.perf_counter()
            run(draft)
            samples.append(time.perf_counter() - started)
    with Image.open(io.BytesIO(data)) as image:
        size = image.size
    return {
        "size": list(size),
        "draft_min_ratio": DRAFT_MIN_RATIO,
        "scale": draft_scale(*size, spec.resize),
        "max_levels": float(difference.max()),
        "mean_levels": float(difference.mean()),
        "exact_ms": statistics.median(times[False]) * 1000,
        "draft_ms": statistics.median(times[True]) * 1000,
    }


def draft_costs(repeat: int = 20) -> dict[str, dict[str, Any]]:
    """`draft_cost` of the benchmark's two photos, by name."""
    photos = {"china.jpg 640x427": photo_path("china.jpg").read_bytes()}
    photos["china 4000x3000 q90"] = phone_photo()
    return {name: draft_cost(data, repeat) for name, data in photos.items()}


def before(case: Case) -> dict[str, Stage]:
    """The naive pipeline, stage by stage (float arithmetic, a copy at every step)."""
    spec, mode = case.metadata.preprocessing, case.metadata.input.color_mode

    def decode(opened: Image.Image) -> Image.Image:
        opened.load()
        return opened

    def resize(image: Image.Image) -> Image.Image:
        size = resize_size(*image.size, spec.resize)
        return image if size == image.size else image.resize(size, RESAMPLE[spec.interpolation])

    def normalize(image: Image.Image) -> npt.NDArray[np.float32]:
        array = np.asarray(image, dtype=np.uint8)
        array = array[:, :, None] if array.ndim == 2 else array
        chw = array.transpose(2, 0, 1).astype(np.float32) / np.float32(255)
        mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
        return np.ascontiguousarray((chw - mean) / std, dtype=np.float32)

    return {
        "open": lambda data: _open(data, max_pixels=MAX_PIXELS, min_side=1),
        "decode": decode,
        "orient": ImageOps.exif_transpose,
        "convert": lambda image: image.convert(mode),
        "resize": resize,
        "crop": lambda image: center_crop(image, spec.center_crop),
        "to-input": normalize,
    }


def current(case: Case, *, draft: bool) -> dict[str, Stage]:
    """The service's pipeline as `preprocess` runs it: exact, or with JPEG draft decoding (which
    resizes in the stored orientation, then orients)."""
    spec, mode = case.metadata.preprocessing, case.metadata.input.color_mode
    header = Header()

    def decode(opened: Image.Image) -> Image.Image:
        header.size = opened.size
        header.extent = _draft(opened, mode, spec.resize) if draft else None
        header.transpose = _load(opened)
        return opened

    def resize(image: Image.Image) -> Image.Image:
        size = resize_size(*header.size, spec.resize)
        if header.extent is None and size == image.size:
            return image
        return image.resize(size, RESAMPLE[spec.interpolation], box=header.extent)

    stages: dict[str, Stage] = {
        "open": lambda data: _open(data, max_pixels=MAX_PIXELS, min_side=1),
        "decode": decode,
        "convert": lambda image: _convert(image, mode),
        "orient": lambda image: _orient(image, header.transpose),
        "resize": resize,
        "crop": lambda image: center_crop(image, spec.center_crop),
        "to-input": lambda image: to_input(image, spec),
    }
    if draft:  # orient after resizing, as `_resize_drafted` does
        order = ("open", "decode", "convert", "resize", "orient", "crop", "to-input")
        stages = {name: stages[name] for name in order}
    return stages


def run_staged(stages: dict[str, Stage], data: bytes) -> tuple[dict[str, float], Any]:
    """One pass; seconds per stage and the result. Intermediate images are freed at the end, as
    a "release" stage: freeing a decoded 12 MP photo costs milliseconds of its own."""
    values: list[Any] = [data]
    seconds = {}
    for name, stage in stages.items():
        started = time.perf_counter()
        values.append(stage(values[-1]))
        seconds[name] = time.perf_counter() - started
    result = values[-1]
    started = time.perf_counter()
    values.clear()
    seconds["release"] = time.perf_counter() - started
    return seconds, result


def run_whole(stages: dict[str, Stage], data: bytes) -> float:
    """One pass without stopping between stages, each intermediate freed as soon as the next
    stage has it (as in a plain function call); seconds."""
    started = time.perf_counter()
    value: Any = data
    for stage in stages.values():
        value = stage(value)
    del value
    return time.perf_counter() - started


def check(case: Case, pipelines: dict[str, dict[str, Stage]]) -> None:
    """The staged pipelines compute what `preprocess` computes ("before" its exact result)."""
    exact = preprocess(case.data, case.metadata, max_pixels=MAX_PIXELS, jpeg_draft=False)
    drafted = preprocess(case.data, case.metadata, max_pixels=MAX_PIXELS, jpeg_draft=True)
    expected = {"before": exact, "exact": exact, "draft": drafted}
    for name, stages in pipelines.items():
        if not np.array_equal(run_staged(stages, case.data)[1], expected[name]):
            raise SystemExit(f"{case.name}: staged {name} differs from preprocess()")


def measure(case: Case, repeat: int) -> dict[str, dict[str, float]]:
    """Median ms per stage, of their total, and of a whole unstaged call, per pipeline."""
    pipelines = {
        "before": before(case),
        "exact": current(case, draft=False),
        "draft": current(case, draft=True),
    }
    check(case, pipelines)
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in pipelines}
    for _ in range(repeat):
        for name, stages in pipelines.items():
            seconds = run_staged(stages, case.data)[0]
            whole = run_whole(stages, case.data)
            samples[name].append(seconds | {"total": sum(seconds.values()), "call": whole})
    return {
        name: {key: statistics.median(s[key] for s in runs) * 1000 for key in runs[0]}
        for name, runs in samples.items()
    }


def report(case: Case, medians: dict[str, dict[str, float]], repeat: int) -> None:
    print(f"\n{case.name} ({len(case.data) / 1024:.0f} KiB, median of {repeat}, ms)")
    print(f"{'stage':<10}" + "".join(f"{name:>10}" for name in medians))
    for stage in (*STAGES, "total", "call"):
        print(f"{stage:<10}" + "".join(f"{m[stage]:>10.3f}" for m in medians.values()))
    base = medians["before"]["call"]
    print(f"{'x before':<10}" + "".join(f"{m['call'] / base:>10.2f}" for m in medians.values()))


def encode_jpeg(image: Image.Image, quality: int = LARGE_QUALITY) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def mosaic(short_side: int) -> Image.Image:
    """Native-resolution tiles of both photos (some mirrored), 3:2, cropped to `short_side`."""
    tiles = [Image.open(photo_path(name)).convert("RGB") for name in ("china.jpg", "flower.jpg")]
    width, height = short_side * 3 // 2, short_side
    columns, rows = -(-width // MOSAIC_TILE[0]), -(-height // MOSAIC_TILE[1])
    canvas = Image.new("RGB", (columns * MOSAIC_TILE[0], rows * MOSAIC_TILE[1]))
    for index in range(columns * rows):
        tile = tiles[index % 2]
        if index % 3 == 1:
            tile = tile.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        row, column = divmod(index, columns)
        canvas.paste(tile, (column * MOSAIC_TILE[0], row * MOSAIC_TILE[1]))
    return canvas.crop((0, 0, width, height))


def large_photos() -> list[tuple[str, bytes]]:
    photos = []
    for short in TOLERANCE_SHORT_SIDES:
        for name in ("china.jpg", "flower.jpg"):
            with Image.open(photo_path(name)) as photo:
                size = (round(photo.width * short / photo.height), short)
                upscaled = photo.resize(size, Image.Resampling.BICUBIC)
            photos.append((f"{name} upscaled {size[0]}x{size[1]}", encode_jpeg(upscaled)))
        tiled = mosaic(short)
        photos.append((f"mosaic {tiled.width}x{tiled.height}", encode_jpeg(tiled)))
    return photos


def levels(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32], std: list[float]) -> Any:
    """|a - b| in 8-bit levels, per element."""
    return np.abs(a - b) * np.asarray(std, dtype=np.float32)[:, None, None] * 255


def photo_tolerance() -> list[npt.NDArray[np.float32]]:
    """Prints the table; returns the exact and drafted inputs, interleaved."""
    meta = model_metadata("resnet18", "RGB", 256, 224)
    spec = meta.preprocessing
    inputs = []
    print(f"{'photo':<30}{'scale':>6}{'draft max':>10}{'mean':>7}{'q95 max':>9}{'mean':>7}")
    for name, data in large_photos():
        exact = preprocess(data, meta, max_pixels=MAX_PIXELS, jpeg_draft=False)
        drafted = preprocess(data, meta, max_pixels=MAX_PIXELS, jpeg_draft=True)
        with Image.open(io.BytesIO(data)) as photo:
            scale = draft_scale(*photo.size, spec.resize)
            again = encode_jpeg(photo, REENCODE_QUALITY)
        reencoded = preprocess(again, meta, max_pixels=MAX_PIXELS, jpeg_draft=False)
        d, q = levels(drafted, exact, spec.std), levels(reencoded, exact, spec.std)
        print(
            f"{name:<30}{scale:>6}{d.max():>10.0f}{d.mean():>7.2f}{q.max():>9.0f}{q.mean():>7.2f}"
        )
        inputs += [exact, drafted]
    return inputs


def agreement(model_dir: Path, inputs: npt.NDArray[np.float32]) -> float:
    """Share of (exact, drafted) input pairs, interleaved in `inputs`, with the same top-1."""
    import onnxruntime as ort

    session = ort.InferenceSession(
        str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    logits = session.run(["logits"], {"input": inputs})[0]
    top1 = logits.argmax(axis=1)
    return float((top1[0::2] == top1[1::2]).mean())


def fashion_agreement(side: int) -> None:
    import onnxruntime as ort

    from training.data.idx import load_fashion_mnist

    model_dir = REPO_ROOT / "models" / "lenet5-fashion" / "1"
    meta = ModelMetadata.model_validate_json((model_dir / "metadata.json").read_text())
    images, labels = load_fashion_mnist(train=False)
    inputs = []
    for pixels in images[:FASHION_IMAGES]:
        data = encode_jpeg(Image.fromarray(pixels).resize((side, side), Image.Resampling.BICUBIC))
        inputs.append(preprocess(data, meta, max_pixels=MAX_PIXELS, jpeg_draft=False))
        inputs.append(preprocess(data, meta, max_pixels=MAX_PIXELS, jpeg_draft=True))
    batch = np.stack(inputs)
    session = ort.InferenceSession(
        str(model_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    top1 = session.run([meta.output.name], {meta.input.name: batch})[0].argmax(axis=1)
    exact, drafted, truth = top1[0::2], top1[1::2], labels[:FASHION_IMAGES]
    d = levels(batch[1::2], batch[0::2], meta.preprocessing.std)
    print(
        f"lenet5-fashion, {FASHION_IMAGES} Fashion-MNIST test images as {side}x{side} JPEGs "
        f"(drafted {draft_scale(side, side, meta.preprocessing.resize)}x): accuracy exact "
        f"{(exact == truth).mean():.3f}, draft {(drafted == truth).mean():.3f}, top-1 agreement "
        f"{(exact == drafted).mean():.3f}; input max {d.max():.0f} mean {d.mean():.2f} levels"
    )


def tolerance() -> None:
    inputs = photo_tolerance()
    resnet = BENCH_REPOSITORY / "resnet18" / "1"
    if (resnet / "model.onnx").exists():
        share = agreement(resnet, np.stack(inputs))
        print(f"\nrandom-weight resnet18 (sanity only): top-1 agreement {share:.3f}\n")
    for side in FASHION_SIDES:
        fashion_agreement(side)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=50, help="runs per image (median)")
    parser.add_argument("--tolerance", action="store_true", help="draft vs exact, no timings")
    parser.add_argument("--draft-cost", action="store_true", help="the benchmark photos only")
    args = parser.parse_args()
    if args.tolerance:
        tolerance()
        return
    if args.draft_cost:
        costs = draft_costs(args.repeat)
        for name, cost in costs.items():
            print(
                f"{name}: drafted 1/{cost['scale']}, input max {cost['max_levels']:.1f} mean "
                f"{cost['mean_levels']:.3f} levels; exact {cost['exact_ms']:.1f} ms, draft "
                f"{cost['draft_ms']:.1f} ms"
            )
        print(json.dumps(costs))  # the last line: what bench/compare.py records
        return
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for case in cases():
        report(case, measure(case, args.repeat), args.repeat)
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
