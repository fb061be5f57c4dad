"""service/smallpng.py: small plain PNGs decoded by libspng give exactly what Pillow gives, and
every other file (or damaged one) is left to Pillow, so no answer changes."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from service import preprocess as preprocess_module
from service.errors import BadRequest
from service.metadata import ModelMetadata
from service.preprocess import preprocess
from service.smallpng import SMALL_MAX_PIXELS, decode_plain
from tests.conftest import REPO_ROOT

MAX_PIXELS = 10_000


def metadata(color_mode: str, resize: int = 28, crop: int = 28) -> ModelMetadata:
    path = REPO_ROOT / "models" / "lenet5-fashion" / "1" / "metadata.json"
    raw = ModelMetadata.model_validate_json(path.read_text()).model_dump()
    channels = 3 if color_mode == "RGB" else 1
    raw["input"] |= {"shape": [channels, crop, crop], "color_mode": color_mode}
    raw["preprocessing"] |= {
        "resize": resize,
        "center_crop": crop,
        "mean": [0.5] * channels,
        "std": [0.25] * channels,
    }
    return ModelMetadata.model_validate(raw)


def png(image: Image.Image, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", **kwargs)
    return buffer.getvalue()


def noise(mode: str, size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def outcome(
    data: bytes, meta: ModelMetadata, monkeypatch: pytest.MonkeyPatch, fast: bool
) -> object:
    """preprocess's result, or the error it raised (type and message); Pillow's bomb warning is
    an error, as the service makes it (preprocess.configure_pillow)."""
    with monkeypatch.context() as patch, warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        if not fast:
            patch.setattr(preprocess_module, "decode_plain", lambda data, mode: None)
        try:
            return preprocess(data, meta, max_pixels=MAX_PIXELS, min_side=2)
        except BadRequest as err:
            return (type(err).__name__, err.message)


def assert_same_outcome(data: bytes, meta: ModelMetadata, monkeypatch: pytest.MonkeyPatch) -> None:
    fast, pillow = (outcome(data, meta, monkeypatch, fast) for fast in (True, False))
    if isinstance(pillow, np.ndarray):
        assert isinstance(fast, np.ndarray)
        assert fast.dtype == pillow.dtype
        assert np.array_equal(fast, pillow)
    else:
        assert fast == pillow


def with_chunk(data: bytes, kind: bytes, body: bytes) -> bytes:
    """`data` with one more chunk right after IHDR."""
    return data[:33] + chunk(kind, body) + data[33:]


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def chunk_offsets(data: bytes) -> list[tuple[int, int]]:
    """(start, body length) of every chunk."""
    offsets, offset = [], 8
    while offset + 8 <= len(data):
        (length,) = struct.unpack_from(">I", data, offset)
        offsets.append((offset, length))
        offset += 12 + length
    return offsets


def fix_crcs(data: bytes) -> bytes:
    out = bytearray(data)
    for start, length in chunk_offsets(data):
        end = start + 8 + length
        if end + 4 <= len(out):
            out[end : end + 4] = struct.pack(">I", zlib.crc32(bytes(out[start + 4 : end])))
    return bytes(out)


PLAIN = [
    ("L", (28, 28), {}),
    ("L", (28, 28), {"compress_level": 0}),
    ("L", (28, 28), {"optimize": True}),
    ("L", (37, 23), {}),
    ("L", (2, 64), {}),
    ("RGB", (28, 28), {}),
    ("RGB", (64, 64), {"compress_level": 9}),
    ("RGB", (5, 3), {}),
]


@pytest.mark.parametrize(("mode", "size", "options"), PLAIN)
def test_plain_pngs_decode_as_pillow_decodes_them(
    mode: str, size: tuple[int, int], options: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    image = noise(mode, size)
    data = png(image, **options)
    pixels = decode_plain(data, mode)
    assert pixels is not None
    assert np.array_equal(pixels, np.asarray(image))
    for resize, crop in ((28, 28), (32, 24), (2, 2)):
        assert_same_outcome(data, metadata(mode, resize, crop), monkeypatch)


def test_text_and_colour_space_chunks_change_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "test")
    data = png(noise("L", (28, 28)), pnginfo=info, dpi=(72, 72))
    data = with_chunk(data, b"gAMA", struct.pack(">I", 45455))
    assert decode_plain(data, "L") is not None
    assert_same_outcome(data, metadata("L"), monkeypatch)


def test_image_data_split_over_several_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Encoders may split the zlib stream over IDAT chunks of any size, empty ones included;
    an ancillary chunk between them (invalid) is left to Pillow."""
    image = noise("L", (28, 28))
    data = png(image)
    (_, _), (idat, length), (iend, _) = chunk_offsets(data)
    stream = data[idat + 8 : idat + 8 + length]
    split = data[:idat] + b"".join(
        chunk(b"IDAT", part) for part in (stream[:100], stream[100:101], b"", stream[101:])
    )
    split += data[iend:]
    pixels = decode_plain(split, "L")
    assert pixels is not None
    assert np.array_equal(pixels, np.asarray(image))
    assert_same_outcome(split, metadata("L"), monkeypatch)
    interrupted = data[:idat] + chunk(b"IDAT", stream[:100]) + chunk(b"tEXt", b"a\0b")
    interrupted += chunk(b"IDAT", stream[100:]) + data[iend:]
    assert decode_plain(interrupted, "L") is None
    assert_same_outcome(interrupted, metadata("L"), monkeypatch)


def exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6
    return png(noise("L", (28, 20)), exif=exif.tobytes())


LEFT_TO_PILLOW = {
    "palette": lambda: png(noise("RGB", (28, 28)).convert("P")),
    "alpha": lambda: png(noise("RGB", (28, 28)).convert("RGBA")),
    "grey_alpha": lambda: png(noise("L", (28, 28)).convert("LA")),
    "16_bit": lambda: png(Image.fromarray(np.arange(784, dtype=np.uint16).reshape(28, 28))),
    "interlaced": lambda: _interlaced(),
    "transparency": lambda: png(noise("L", (28, 28)), transparency=7),
    "exif": exif_rotated,
    "too_large": lambda: png(noise("L", (65, 64))),
    "compressed_text": lambda: with_chunk(
        png(noise("L", (28, 28))), b"zTXt", b"k\0\0x\x9c\x03\0\0\0\0\1"
    ),
    "bad_crc": lambda: _flip(png(noise("L", (28, 28))), -20),
    "no_iend": lambda: png(noise("L", (28, 28)))[:-12],
    "jpeg": lambda: _jpeg(),
}


def _interlaced() -> bytes:
    data = bytearray(png(noise("L", (28, 28))))
    data[28] = 1  # IHDR's interlace byte (the pixels are then wrong: only Pillow may say so)
    return fix_crcs(bytes(data))


def _flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0xFF
    return bytes(out)


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    noise("L", (28, 28)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize("name", sorted(LEFT_TO_PILLOW))
def test_other_pngs_are_left_to_pillow(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = LEFT_TO_PILLOW[name]()
    assert decode_plain(data, "L") is None
    assert_same_outcome(data, metadata("L"), monkeypatch)


def test_a_png_not_in_the_models_colour_mode_is_left_to_pillow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    grey, rgb = png(noise("L", (28, 28))), png(noise("RGB", (28, 28)))
    assert decode_plain(grey, "RGB") is None
    assert decode_plain(rgb, "L") is None
    assert_same_outcome(grey, metadata("RGB"), monkeypatch)
    assert_same_outcome(rgb, metadata("L"), monkeypatch)


def test_size_limits_answer_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    tiny = png(noise("L", (1, 28)))  # below min_side=2
    assert decode_plain(tiny, "L") is not None
    fast = outcome(tiny, metadata("L"), monkeypatch, fast=True)
    assert fast == outcome(tiny, metadata("L"), monkeypatch, fast=False)
    assert isinstance(fast, tuple)
    assert fast[0] == "ImageTooSmall"
    assert SMALL_MAX_PIXELS <= MAX_PIXELS


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_damaged_pngs_with_valid_crcs_answer_as_pillow_does(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random bytes changed anywhere after the signature, chunk CRCs then recomputed: libspng and
    Pillow must agree on every file libspng decodes (it refuses the rest to Pillow)."""
    rng = np.random.default_rng(11)
    meta = metadata(mode)
    for index in range(300):
        data = bytearray(png(noise(mode, (28, 28), seed=index), optimize=index % 2 == 0))
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(8, len(data)))] = int(rng.integers(0, 256))
        assert_same_outcome(fix_crcs(bytes(data)), meta, monkeypatch)
