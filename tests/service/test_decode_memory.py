"""Decode memory (service/preprocess.py, docs/security.md): an image is decoded within
`MAX_DECODE_BYTES`, estimated from its header before any pixel is decoded, or refused; 16-bit
greys are scaled with integers and palettes converted in strips, with the same result.

The slow tests measure real peaks: a process's RSS high-water mark (VmHWM), reset between
cases through /proc/<pid>/clear_refs."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service import preprocess as preprocess_module
from service.errors import ImageTooLarge
from service.metadata import ModelMetadata
from service.preprocess import decode, decode_bytes, preprocess
from tests.conftest import REPO_ROOT, require_system_part
from tests.service.server import ServiceProcess
from tests.service.tiny_model import TinyModel

MIB = 1 << 20
# What a request's body, its HTTP parsing and the answer may add beside the decoding itself.
REQUEST_SLACK_BYTES = 24 * MIB
# The server's whole peak with four of the largest images decoding at once: the Kubernetes
# limit of deploy/k8s/base is 2 GiB.
SERVER_PEAK_BOUND_BYTES = 1024 * MIB
HOSTILE_SIDE = 6300  # 39.7 M pixels: under the 40 M pixel limit
LINUX = "Linux with CONFIG_PROC_PAGE_MONITOR (resets a process's VmHWM)"


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def grey16(width: int, height: int) -> Image.Image:
    return Image.fromarray(np.zeros((height, width), dtype=np.uint16))


# --- the conversions --------------------------------------------------------------------
@pytest.fixture
def small_strips(monkeypatch: pytest.MonkeyPatch) -> None:
    """Strips of a few rows, so that small images are converted in many of them."""
    monkeypatch.setattr(preprocess_module, "STRIP_PIXELS", 1000)


@pytest.mark.usefixtures("small_strips")
def test_every_16_bit_grey_is_scaled_as_rounding_v_over_257_would() -> None:
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    decoded = decode(encode(Image.fromarray(values), "PNG"), color_mode="L", max_pixels=10**6)
    expected = np.clip(np.round(values.astype(np.float64) / 257), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(decoded), expected)
    rgb = decode(encode(Image.fromarray(values), "PNG"), color_mode="RGB", max_pixels=10**6)
    np.testing.assert_array_equal(np.asarray(rgb), np.repeat(expected[:, :, None], 3, axis=2))


@pytest.mark.usefixtures("small_strips")
def test_32_bit_greys_clip_to_black_and_white() -> None:
    values = np.array([[-(2**31), -1, 0, 385, 65535, 65536, 2**31 - 1]] * 8, dtype=np.int32)
    converted = preprocess_module._convert(Image.fromarray(values, "I"), "L")
    assert np.asarray(converted)[0].tolist() == [0, 0, 0, 1, 255, 255, 255]


@pytest.mark.usefixtures("small_strips")
@pytest.mark.parametrize("color_mode", ["L", "RGB"])
def test_palettes_converted_in_strips_equal_a_whole_conversion(color_mode: str) -> None:
    rng = np.random.default_rng(0)
    palette = Image.fromarray(rng.integers(0, 256, (90, 70, 3), dtype=np.uint8)).convert("P")
    palette.info["transparency"] = 5
    decoded = decode(encode(palette, "PNG"), color_mode=color_mode, max_pixels=10**6)
    reopened = Image.open(io.BytesIO(encode(palette, "PNG")))
    whole = reopened.convert("RGBA").convert(color_mode)
    np.testing.assert_array_equal(np.asarray(decoded), np.asarray(whole))


# --- the budget ---------------------------------------------------------------------------
def test_an_image_over_the_budget_is_refused_before_decoding(tiny_cnn: TinyModel) -> None:
    webp = encode(Image.new("RGB", (2000, 2000)), "WEBP", lossless=True)
    opened = Image.open(io.BytesIO(webp))
    needed = decode_bytes(opened, "L", tiny_cnn.metadata.preprocessing.resize)
    assert needed > 2000 * 2000 * preprocess_module.WEBP_LOAD_BYTES_PER_PIXEL
    with pytest.raises(ImageTooLarge, match=r"2000x2000 \(WEBP RGB\).* MiB, more than the 32 MiB"):
        preprocess(webp, tiny_cnn.metadata, max_pixels=10**8, max_decode_bytes=32 * MIB)
    exact = preprocess(webp, tiny_cnn.metadata, max_pixels=10**8, max_decode_bytes=needed)
    assert exact.shape == (1, 16, 16)


def test_a_jpeg_is_judged_at_its_draft_size(tiny_cnn: TinyModel) -> None:
    """Drafted JPEGs are decoded at 1/8 scale: they are not refused for their full size."""
    jpeg = encode(Image.new("RGB", (4000, 3000)), "JPEG")
    budget = 8 * MIB  # under the full decode's 4000 x 3000 x 4 bytes
    drafted = preprocess(jpeg, tiny_cnn.metadata, max_pixels=10**8, max_decode_bytes=budget)
    assert drafted.shape == (1, 16, 16)
    with pytest.raises(ImageTooLarge):
        preprocess(
            jpeg, tiny_cnn.metadata, max_pixels=10**8, max_decode_bytes=budget, jpeg_draft=False
        )


def test_an_exif_transpose_counts_once_the_orientation_is_known(tiny_cnn: TinyModel) -> None:
    image = Image.new("RGB", (1000, 800))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate: a transposed copy of the converted image
    upright, rotated = encode(image, "PNG"), encode(image, "PNG", exif=exif)
    resize = tiny_cnn.metadata.preprocessing.resize
    plain = decode_bytes(Image.open(io.BytesIO(upright)), "L", resize)
    turned = decode_bytes(Image.open(io.BytesIO(upright)), "L", resize, transposed=True)
    assert turned - plain == 1000 * 800  # one more greyscale copy
    budget = plain + 1000
    accepted = preprocess(upright, tiny_cnn.metadata, max_pixels=10**8, max_decode_bytes=budget)
    assert accepted.shape == (1, 16, 16)
    with pytest.raises(ImageTooLarge):
        preprocess(rotated, tiny_cnn.metadata, max_pixels=10**8, max_decode_bytes=budget)


# --- measured peaks -----------------------------------------------------------------------
MEASURE = """
import io, json, sys
from PIL import Image
from service.metadata import ModelMetadata
from service.preprocess import decode_bytes, preprocess

def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key))

path, metadata_path = sys.argv[1], sys.argv[2]
meta = ModelMetadata.model_validate_json(open(metadata_path).read())
data = open(path, "rb").read()
spec, mode = meta.preprocessing, meta.input.color_mode
estimate = decode_bytes(Image.open(io.BytesIO(data)), mode, spec.resize)
preprocess(data, meta, max_pixels=10**8, jpeg_draft=False)  # warm: imports, plugins
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS:")
preprocess(data, meta, max_pixels=10**8, jpeg_draft=False)  # the JPEG decoded whole
print(json.dumps({"estimate": estimate, "peak": status("VmHWM:") - before}))
"""

SIDE = 3000  # 9 M pixels: hundreds of MiB for WebP, seconds for the whole set
IMAGES = {
    "png-grey16": lambda: encode(grey16(SIDE, SIDE), "PNG"),
    "png-grey": lambda: encode(Image.new("L", (SIDE, SIDE)), "PNG"),
    "png-rgb": lambda: encode(Image.new("RGB", (SIDE, SIDE)), "PNG"),
    "png-rgba": lambda: encode(Image.new("RGBA", (SIDE, SIDE)), "PNG"),
    "png-palette": lambda: encode(Image.new("P", (SIDE, SIDE)), "PNG"),
    "webp": lambda: encode(Image.new("RGB", (SIDE, SIDE)), "WEBP", lossless=True),
    "jpeg-cmyk": lambda: encode(Image.new("CMYK", (SIDE, SIDE)), "JPEG"),
}


def clear_refs_available(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("color_mode", ["L", "RGB"])
@pytest.mark.parametrize("kind", sorted(IMAGES))
def test_the_estimate_bounds_the_measured_peak(
    tmp_path: Path, tiny_repo: Path, kind: str, color_mode: str
) -> None:
    require_system_part(clear_refs_available(os.getpid()), "/proc/<pid>/clear_refs", LINUX)
    model = "tiny-cnn" if color_mode == "L" else "tiny-rgb"
    image = tmp_path / kind
    image.write_bytes(IMAGES[kind]())
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            MEASURE,
            str(image),
            str(tiny_repo / model / "1" / "metadata.json"),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    measured = json.loads(result.stdout)
    assert measured["peak"] <= measured["estimate"], measured
    assert measured["estimate"] <= 2 * measured["peak"] + 8 * MIB, measured  # not wildly over


def _status_bytes(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key))


@pytest.mark.slow
def test_hostile_images_alone_and_four_at_once_stay_within_the_budget(
    tmp_path: Path, tiny_repo: Path, tiny_cnn: TinyModel
) -> None:
    """A 77 KB 16-bit PNG and a 2 KB lossless WebP of 6300 x 6300 pixels: the PNG decodes
    within its estimate (it took 1 GB before integer scaling), the WebP (16 bytes a pixel in
    Pillow's decoder, 635 MB) is refused from its header, each alone and four at once."""
    png16 = encode(grey16(HOSTILE_SIDE, HOSTILE_SIDE), "PNG")
    webp = encode(Image.new("RGB", (HOSTILE_SIDE, HOSTILE_SIDE)), "WEBP", lossless=True)
    meta: ModelMetadata = tiny_cnn.metadata
    png16_bytes = decode_bytes(Image.open(io.BytesIO(png16)), "L", meta.preprocessing.resize)
    assert png16_bytes < 256 * MIB  # the default budget: decoded
    cases = [  # the refusals first: glibc keeps what the decodes freed, for reuse
        ("webp", webp, 1, 400, 0),
        ("webp", webp, 4, 400, 0),
        ("png16", png16, 1, 200, png16_bytes),
        ("png16", png16, 4, 200, 4 * png16_bytes),
    ]
    media = {"png16": "image/png", "webp": "image/webp"}
    with ServiceProcess(
        tmp_path / "service.log",
        model_repository=tiny_repo,
        default_model="tiny-cnn",
        providers="cpu",
        decode_threads=4,
    ) as service:
        pid = service.process.pid
        require_system_part(clear_refs_available(pid), "/proc/<pid>/clear_refs", LINUX)
        url = f"{service.base_url}/v1/models/tiny-cnn/classify"
        print()  # noqa: T201
        for name, image, count, status, decoding in cases:
            headers = {"content-type": media[name]}
            clear_refs_available(pid)  # the high-water mark restarts from the current RSS
            before = _status_bytes(pid, "VmRSS:")
            with ThreadPoolExecutor(count) as pool:
                futures = [
                    pool.submit(httpx.post, url, content=image, headers=headers, timeout=120)
                    for _ in range(count)
                ]
                answers = [future.result() for future in futures]
            peak = _status_bytes(pid, "VmHWM:")
            print(  # noqa: T201
                f"{name} x{count}: {[a.status_code for a in answers]}, RSS {before / MIB:.0f} "
                f"MiB, peak +{(peak - before) / MIB:.0f} MiB (bound +"
                f"{(decoding + count * REQUEST_SLACK_BYTES) / MIB:.0f}), {peak / MIB:.0f} MiB"
            )
            assert [a.status_code for a in answers] == [status] * count, answers[0].text
            if status == 400:
                assert answers[0].json()["error"]["code"] == "image_too_large"
                assert "MiB allowed per image" in answers[0].json()["error"]["message"]
            assert peak - before <= decoding + count * REQUEST_SLACK_BYTES
            assert peak <= SERVER_PEAK_BOUND_BYTES
