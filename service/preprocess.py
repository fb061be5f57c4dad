"""Image decoding and preprocessing: the torchvision transforms used in training, bit-exact.

Pipeline (metadata.preprocessing): decode (JPEG, PNG or WebP only) -> EXIF orientation ->
`convert(color_mode)` -> Resize(resize) -> CenterCrop(center_crop) -> /255 -> (x - mean) / std.
Runs in a worker thread: nothing here touches the event loop.

JPEG draft decoding (`jpeg_draft`, on by default): a JPEG large enough is decoded at 1/2, 1/4 or
1/8 scale in the DCT domain (Pillow's `draft`), keeping its shorter side at least
`DRAFT_MIN_RATIO x resize`, then resized as usual: 4-5x faster on camera photos, with an input
that differs slightly from torchvision's (tolerance measured by `bench/preprocess.py --tolerance`).
Everything else, PNG and WebP, and JPEGs too small to draft, is bit-exact with torchvision.

Decode memory: the pixel limit does not bound what an image takes in memory (a 77 KB 16-bit
PNG of 40 M pixels is 80 MB decoded; Pillow's WebP decoder holds four RGBA copies). Before any
pixel is decoded, `decode_bytes` estimates the peak from the header (the decoded image, its
conversion to the model's mode, the EXIF transpose and the resize) and an image over
`max_decode_bytes` is refused. Conversion runs in strips of rows, so only the decoded image and
the converted one are ever whole; 16-bit greys are scaled with integers, strip by strip.
"""

from __future__ import annotations

import functools
import io
import math
import re
import struct
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from service.errors import (
    BadRequest,
    ImageTooLarge,
    ImageTooSmall,
    InvalidImage,
    UnsupportedImage,
)
from service.metadata import ModelMetadata, Preprocessing

# JPEG, PNG and WebP cover cameras, screenshots and the web; other Pillow plugins (TIFF, BMP,
# PSD, EPS, ...) are attack surface without a use here. GIF is refused: animated, palette-only.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP")
RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
# Decoded modes, by what each needs before `convert(color_mode)` (docs/security.md). Alpha is
# dropped, as torchvision's loader (`convert("RGB")`) does in training; 16-bit and 32-bit
# integer greys are scaled to 8 bits instead of being clipped; CMYK is converted by Pillow.
DIRECT_MODES = frozenset({"1", "L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"})
PALETTE_MODES = frozenset({"P", "PA"})  # through RGBA, so palette transparency is honoured
WIDE_GREY_MODES = frozenset({"I;16", "I;16B", "I;16L", "I"})
WIDE_GREY_MAX = 65535  # 32-bit "I" values beyond 16 bits clip to white, negatives to black
WIDE_GREY_DIVISOR = 257  # 65535 / 257 = 255: round(v / 257) == (v + 128) // 257 (257 is odd)
# Bytes per pixel of Pillow's images in memory: its core keeps 2-, 3- and 4-band modes in 4
# bytes a pixel (RGB and LA included), 16-bit greys in 2, the rest in 1.
STORED_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2}
WIDE_STORED_BYTES = 4
# Pillow decodes WebP with libwebp's animation decoder: its canvas and frame buffers, the frame
# it returns as bytes and the image they are copied into, RGBA each (measured: 16.0 bytes a
# pixel while loading, 12 after, when the bytes are freed and the decoder's buffers still held).
WEBP_LOAD_BYTES_PER_PIXEL = 16
WEBP_HELD_BYTES_PER_PIXEL = 12
# Conversion works on strips of about this many pixels: a strip, its intermediate and converted
# copies (for 16-bit greys numpy's, 2 + 4 + 1 bytes a pixel) stay within STRIP_BYTES.
STRIP_PIXELS = 1 << 20
STRIP_BYTES = 16 * STRIP_PIXELS
MIB = 1 << 20
DECODER_BYTES = 4 * MIB  # the decoders' own state and row buffers (measured: under 2 MiB)
# Exceptions Pillow's decoders and EXIF parser raise on corrupt data (fuzzed: tests/badinputs.py).
DECODE_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
)
BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")  # in the text of Pillow's DecompressionBomb errors
# EXIF orientation -> the transpose that displays the image upright (as ImageOps.exif_transpose).
EXIF_ORIENTATION_TAG = 0x0112
ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# JPEG draft decoding: the scaled decode keeps the shorter side at least DRAFT_MIN_RATIO x the
# resize target, so the antialiased resize after it still averages 2.5 or more decoded pixels
# per output pixel. The worst case, a draft landing exactly on the ratio with detail at every
# pixel, moves the input by max 8 / mean 0.56 of 255 levels (3x: 7 / 0.48; 2x: 13 / 1.12). A
# 12 MP photo (4032x3024, ResNet preprocessing) is decoded at 1/4, 4-5x faster than exactly,
# within max 4 / mean 0.19-0.29 levels; 3x would decode it at 1/2, only 2.5x faster
# (bench/preprocess.py --draft-cost and --tolerance). Off: every input bit-exact with
# torchvision.
JPEG_DRAFT = True
DRAFT_MIN_RATIO = 2.5
DRAFT_SCALES = (8, 4, 2)  # what libjpeg can scale by in the DCT domain
Extent = tuple[float, float, float, float]  # (left, upper, right, lower), Image.resize's box


def configure_pillow(max_pixels: int) -> None:
    """Pillow's own bomb guard for the whole process: its limit is ours, and the
    DecompressionBombWarning it gives between 1x and 2x the limit becomes an error."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def _check_size(width: int, height: int, *, max_pixels: int, min_side: int) -> None:
    if width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} pixels, more than the {max_pixels} allowed")
    if min(width, height) < min_side:
        raise ImageTooSmall(f"image is {width}x{height} pixels, sides must be at least {min_side}")


def _convert_strip(image: Image.Image, color_mode: str) -> Image.Image:
    mode = image.mode
    if mode in PALETTE_MODES:
        image = image.convert("RGBA")
    elif mode in WIDE_GREY_MODES:
        wide = np.clip(np.asarray(image), 0, WIDE_GREY_MAX).astype(np.uint32)
        wide += WIDE_GREY_DIVISOR // 2
        wide //= WIDE_GREY_DIVISOR
        image = Image.fromarray(wide.astype(np.uint8), "L")
    return image.convert(color_mode)


def _convert(image: Image.Image, color_mode: str) -> Image.Image:
    """`image` in `color_mode`; the image itself when it is already (convert would copy it).
    Converted strip by strip: the intermediates (RGBA for palettes, integers for 16-bit
    greys, the RGB Pillow goes through from CMYK) never exist at full size, and every step
    works pixel by pixel, so the result is the same."""
    mode = image.mode
    if mode == color_mode:
        return image
    if mode not in DIRECT_MODES and mode not in PALETTE_MODES and mode not in WIDE_GREY_MODES:
        raise UnsupportedImage(f"image mode {mode} is not supported")
    width, height = image.size
    rows = max(1, STRIP_PIXELS // width)
    if rows >= height:
        return _convert_strip(image, color_mode)
    converted = Image.new(color_mode, image.size)
    for top in range(0, height, rows):
        strip = image.crop((0, top, width, min(top + rows, height)))
        converted.paste(_convert_strip(strip, color_mode), (0, top))
    return converted


def stored_bytes_per_pixel(mode: str) -> int:
    return STORED_BYTES_PER_PIXEL.get(mode, WIDE_STORED_BYTES)


def decode_bytes(
    opened: Image.Image, color_mode: str, resize: int, *, transposed: bool = False
) -> int:
    """Peak bytes that decoding and preprocessing `opened` (its header read, as it will be
    decoded: after any draft) take, an upper bound: the decoding itself, or what it leaves held
    (the decoded image) plus its conversion to `color_mode` and the strips that make it, the
    EXIF transpose of the converted image, and Pillow's resize (horizontal pass, then the
    result), whichever is more. The encoded bytes and the model's input are not counted."""
    width, height = opened.size
    pixels = width * height
    target = stored_bytes_per_pixel(color_mode)
    if opened.format == "WEBP":
        loading, held = pixels * WEBP_LOAD_BYTES_PER_PIXEL, pixels * WEBP_HELD_BYTES_PER_PIXEL
    else:
        loading = held = pixels * stored_bytes_per_pixel(opened.mode)
    if opened.mode != color_mode:
        held += pixels * target + STRIP_BYTES
    if transposed:
        held += pixels * target
    resized_width, resized_height = resize_size(width, height, resize)
    held += (resized_width * height + resized_width * resized_height) * target
    return DECODER_BYTES + max(loading, held)


def _check_decode_bytes(
    opened: Image.Image,
    color_mode: str,
    resize: int,
    max_bytes: int | None,
    *,
    transposed: bool = False,
) -> None:
    if max_bytes is None:
        return
    needed = decode_bytes(opened, color_mode, resize, transposed=transposed)
    if needed > max_bytes:
        width, height = opened.size
        raise ImageTooLarge(
            f"image is {width}x{height} ({opened.format} {opened.mode}): decoding it takes "
            f"about {math.ceil(needed / MIB)} MiB, more than the {max_bytes / MIB:g} MiB "
            "allowed per image"
        )


@contextmanager
def _decode_errors() -> Iterator[None]:
    """Pillow's exceptions on unknown, oversized, truncated or corrupt data -> BadRequest."""
    try:
        yield
    except UnidentifiedImageError as err:
        raise InvalidImage(
            f"not a {'/'.join(ALLOWED_FORMATS)} image, or its header is damaged"
        ) from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        # Pillow's text names twice the limit past 2x, and "DOS attack": say what was refused.
        counted = BOMB_PIXELS.search(str(err))
        size = f" ({counted[1]} pixels)" if counted else ""
        limit = Image.MAX_IMAGE_PIXELS
        raise ImageTooLarge(f"image{size} has more than the {limit} pixels allowed") from err
    except DECODE_ERRORS as err:  # truncated or corrupt image data
        raise InvalidImage(f"undecodable image: {err}") from err


def _open(data: bytes, *, max_pixels: int, min_side: int) -> Image.Image:
    """The image's header, checked: size within limits, one frame. No pixel is decoded yet."""
    if not data:
        raise InvalidImage("empty image")
    opened = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    _check_size(*opened.size, max_pixels=max_pixels, min_side=min_side)
    frames = getattr(opened, "n_frames", 1)
    if frames > 1:  # which frame would be classified is not a choice to make silently
        raise UnsupportedImage(f"animated images are not supported ({frames} frames)")
    return opened


def _load(opened: Image.Image) -> Image.Transpose | None:
    """Decode the pixels; the transpose that EXIF orientation asks for, applied later (after
    `_convert`, which works pixel by pixel and so commutes with it)."""
    opened.load()
    return ORIENTATION_TRANSPOSE.get(opened.getexif().get(EXIF_ORIENTATION_TAG, 1))


def _orient(image: Image.Image, transpose: Image.Transpose | None) -> Image.Image:
    return image if transpose is None else image.transpose(transpose)


def upright(opened: Image.Image, color_mode: str) -> Image.Image:
    """The pixels of an opened image in `color_mode` ("L" or "RGB"), EXIF orientation applied:
    what the service classifies, and what training reads from image files (training.data), so a
    model is trained on the pixels it is later served. UnsupportedImage for a mode it has no
    conversion for."""
    transpose = _load(opened)
    return _orient(_convert(opened, color_mode), transpose)


def decode(data: bytes, *, color_mode: str, max_pixels: int, min_side: int = 1) -> Image.Image:
    """Decode an encoded image, apply EXIF orientation, convert to `color_mode` ("L" or "RGB").

    The size is checked from the header, before any pixel is decoded; animated images are
    refused.
    """
    with _decode_errors():
        return upright(_open(data, max_pixels=max_pixels, min_side=min_side), color_mode)


def draft_scale(width: int, height: int, resize: int) -> int:
    """The DCT-domain scale (1, 2, 4 or 8) a JPEG of this size is decoded at when drafting: the
    largest that keeps the shorter side at least DRAFT_MIN_RATIO x `resize`."""
    fits = int(min(width, height) // (DRAFT_MIN_RATIO * resize))
    return next((scale for scale in DRAFT_SCALES if fits >= scale), 1)


def _draft(opened: Image.Image, color_mode: str, resize: int) -> Extent | None:
    """Ask libjpeg for a scaled decode (and for greyscale, the luma plane alone) when it pays;
    the whole photo's extent in the scaled image's coordinates when it does, else None."""
    scale = draft_scale(*opened.size, resize) if opened.format == "JPEG" else 1
    if scale == 1:
        return None
    wanted = min(opened.size) // scale  # draft((w, w)) then picks `scale`, not a smaller one
    drafted = opened.draft(color_mode, (wanted, wanted))
    return None if drafted is None else drafted[1]


def resize_size(width: int, height: int, size: int) -> tuple[int, int]:
    """torchvision Resize(int): shorter side to `size`, longer side int(size * long / short)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def center_crop(image: Image.Image, crop: int) -> Image.Image:
    """torchvision CenterCrop(crop): zero padding first where the image is smaller."""
    width, height = image.size
    if width == crop and height == crop:  # already the crop: skip the copy
        return image
    if crop > width or crop > height:
        padded = Image.new(image.mode, (max(width, crop), max(height, crop)))
        padded.paste(image, ((max(crop - width, 0)) // 2, (max(crop - height, 0)) // 2))
        image = padded
        width, height = image.size
    top = int(round((height - crop) / 2.0))
    left = int(round((width - crop) / 2.0))
    return image.crop((left, top, left + crop, top + crop))


def resize_and_crop(image: Image.Image, spec: Preprocessing) -> Image.Image:
    """torchvision Resize(resize, interpolation) then CenterCrop(center_crop) on a PIL image."""
    new_size = resize_size(image.width, image.height, spec.resize)
    if new_size != image.size:  # torchvision returns the image untouched at the target size
        image = image.resize(new_size, RESAMPLE[spec.interpolation])
    return center_crop(image, spec.center_crop)


def _resize_drafted(
    image: Image.Image,
    full_size: tuple[int, int],
    extent: Extent,
    transpose: Image.Transpose | None,
    spec: Preprocessing,
) -> Image.Image:
    """Resize a drafted image to the size the full one would get, then orient and crop: resizing
    before the transpose moves fewer pixels, and keeps `extent` in the stored orientation."""
    new_size = resize_size(*full_size, spec.resize)  # resize_size commutes with a transpose
    resized = image.resize(new_size, RESAMPLE[spec.interpolation], box=extent)
    return center_crop(_orient(resized, transpose), spec.center_crop)


@functools.lru_cache(maxsize=64)
def _normalize_tables(mean: tuple[float, ...], std: tuple[float, ...]) -> npt.NDArray[np.float32]:
    """(C, 256) float32: for every channel and byte value v, (v / 255 - mean) / std computed in
    float32 exactly as ToTensor and Normalize compute it, so that a lookup gives the same bits."""
    values = np.arange(256, dtype=np.float32) / np.float32(255)
    mean32 = np.asarray(mean, dtype=np.float32)[:, None]
    std32 = np.asarray(std, dtype=np.float32)[:, None]
    tables: npt.NDArray[np.float32] = (values[None, :] - mean32) / std32
    tables.flags.writeable = False  # shared between calls and threads
    return tables


def to_input(
    image: Image.Image | npt.NDArray[np.uint8], spec: Preprocessing
) -> npt.NDArray[np.float32]:
    """(C, H, W) float32 from an image or its (H, W[, C]) bytes: ToTensor's /255 then
    Normalize's (x - mean) / std, in float32 (one table lookup per pixel and channel, written
    straight into the channel-first array)."""
    pixels = np.asarray(image, dtype=np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    tables = _normalize_tables(tuple(spec.mean), tuple(spec.std))
    if pixels.shape[2] != len(tables):
        raise ValueError(f"{pixels.shape[2]} image channels, {len(tables)} mean/std values")
    out = np.empty((len(tables), *pixels.shape[:2]), dtype=np.float32)
    for channel, table in enumerate(tables):
        # mode="wrap": bytes are always in range, and the default "raise" buffers the output
        np.take(table, pixels[:, :, channel], out=out[channel], mode="wrap")
    return out


def _check_resized(width: int, height: int, resize: int, max_pixels: int) -> None:
    """A 1 x 40M strip would resize to 28 x 1.1G: refuse it from the header."""
    resized = resize_size(width, height, resize)
    if resized[0] * resized[1] > max_pixels:
        raise ImageTooLarge(
            f"image is {width}x{height}: resizing it to {resize} on its short "
            f"side gives {resized[0]}x{resized[1]}, more than {max_pixels} pixels"
        )


def preprocess(
    data: bytes,
    metadata: ModelMetadata,
    *,
    max_pixels: int,
    min_side: int = 1,
    jpeg_draft: bool = JPEG_DRAFT,
    max_decode_bytes: int | None = None,
) -> npt.NDArray[np.float32]:
    """Encoded image bytes -> the model's (C, H, W) float32 input; `jpeg_draft`: see the module
    docstring (bit-exact with torchvision when False, or when the image is no JPEG large enough
    to draft). An image whose decoding would take more than `max_decode_bytes` (None: no
    limit) is refused before its pixels are decoded (`decode_bytes`)."""
    spec = metadata.preprocessing
    color_mode = metadata.input.color_mode
    with _decode_errors():
        opened = _open(data, max_pixels=max_pixels, min_side=min_side)
        _check_resized(*opened.size, spec.resize, max_pixels)
        full_size = opened.size
        extent = _draft(opened, color_mode, spec.resize) if jpeg_draft else None
        _check_decode_bytes(opened, color_mode, spec.resize, max_decode_bytes)
        transpose = _load(opened)
        if transpose is not None and extent is None:  # PNG's EXIF may follow its pixels
            _check_decode_bytes(opened, color_mode, spec.resize, max_decode_bytes, transposed=True)
        image = _convert(opened, color_mode)
    if extent is None:
        cropped = resize_and_crop(_orient(image, transpose), spec)
    else:
        cropped = _resize_drafted(image, full_size, extent, transpose, spec)
    return to_input(cropped, spec)


def preprocess_many(
    images: list[bytes],
    metadata: ModelMetadata,
    *,
    max_pixels: int,
    min_side: int = 1,
    jpeg_draft: bool = JPEG_DRAFT,
    max_decode_bytes: int | None = None,
) -> list[npt.NDArray[np.float32]]:
    """Every image of one request, in order; the first bad one fails the request."""
    out = []
    for index, data in enumerate(images):
        try:
            out.append(
                preprocess(
                    data,
                    metadata,
                    max_pixels=max_pixels,
                    min_side=min_side,
                    jpeg_draft=jpeg_draft,
                    max_decode_bytes=max_decode_bytes,
                )
            )
        except BadRequest as err:
            if len(images) > 1:
                err.message = f"image {index}: {err.message}"
            raise
    return out
