"""Image decoding and preprocessing, bit-exact with the torchvision transforms used in training.

Pipeline (metadata.preprocessing): decode (JPEG, PNG or WebP only) -> EXIF orientation ->
`convert(color_mode)` -> Resize(resize) -> CenterCrop(center_crop) -> /255 -> (x - mean) / std.
Runs in a worker thread: nothing here touches the event loop.
"""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

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
WIDE_GREY_MODES = {"I;16": 257, "I;16B": 257, "I;16L": 257, "I": 257}
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


def _convert(image: Image.Image, color_mode: str) -> Image.Image:
    mode = image.mode
    if mode in PALETTE_MODES:
        image = image.convert("RGBA")
    elif mode in WIDE_GREY_MODES:
        scaled = np.asarray(image, dtype=np.float64) / WIDE_GREY_MODES[mode]
        image = Image.fromarray(np.clip(np.round(scaled), 0, 255).astype(np.uint8), "L")
    elif mode not in DIRECT_MODES:
        raise UnsupportedImage(f"image mode {mode} is not supported")
    return image.convert(color_mode)


def decode(data: bytes, *, color_mode: str, max_pixels: int, min_side: int = 1) -> Image.Image:
    """Decode an encoded image, apply EXIF orientation, convert to `color_mode` ("L" or "RGB").

    The size is checked from the header, before any pixel is decoded; animated images are
    refused (which frame would be classified is not a choice to make silently).
    """
    if not data:
        raise InvalidImage("empty image")
    try:
        opened = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        _check_size(*opened.size, max_pixels=max_pixels, min_side=min_side)
        frames = getattr(opened, "n_frames", 1)
        if frames > 1:
            raise UnsupportedImage(f"animated images are not supported ({frames} frames)")
        opened.load()
        oriented = ImageOps.exif_transpose(opened)
        return _convert(oriented, color_mode)
    except UnidentifiedImageError as err:
        raise InvalidImage(f"not a {'/'.join(ALLOWED_FORMATS)} image") from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageTooLarge(str(err)) from err
    except DECODE_ERRORS as err:  # truncated or corrupt image data
        raise InvalidImage(f"undecodable image: {err}") from err


def resize_size(width: int, height: int, size: int) -> tuple[int, int]:
    """torchvision Resize(int): shorter side to `size`, longer side int(size * long / short)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def resize_and_crop(image: Image.Image, spec: Preprocessing) -> Image.Image:
    """torchvision Resize(resize, interpolation) then CenterCrop(center_crop) on a PIL image."""
    new_size = resize_size(image.width, image.height, spec.resize)
    if new_size != image.size:  # torchvision returns the image untouched at the target size
        image = image.resize(new_size, RESAMPLE[spec.interpolation])
    crop = spec.center_crop
    width, height = image.size
    if crop > width or crop > height:  # torchvision pads with zeros first
        padded = Image.new(image.mode, (max(width, crop), max(height, crop)))
        padded.paste(image, ((max(crop - width, 0)) // 2, (max(crop - height, 0)) // 2))
        image = padded
        width, height = image.size
    top = int(round((height - crop) / 2.0))
    left = int(round((width - crop) / 2.0))
    return image.crop((left, top, left + crop, top + crop))


def to_input(image: Image.Image, spec: Preprocessing) -> npt.NDArray[np.float32]:
    """(C, H, W) float32: ToTensor's /255 then Normalize's (x - mean) / std, in float32."""
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    chw = array.transpose(2, 0, 1).astype(np.float32) / np.float32(255)
    mean = np.asarray(spec.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[:, None, None]
    return np.ascontiguousarray((chw - mean) / std, dtype=np.float32)


def preprocess(
    data: bytes, metadata: ModelMetadata, *, max_pixels: int, min_side: int = 1
) -> npt.NDArray[np.float32]:
    """Encoded image bytes -> the model's (C, H, W) float32 input."""
    image = decode(
        data, color_mode=metadata.input.color_mode, max_pixels=max_pixels, min_side=min_side
    )
    spec = metadata.preprocessing
    resized = resize_size(image.width, image.height, spec.resize)
    if resized[0] * resized[1] > max_pixels:  # a 1 x 40M strip would resize to 28 x 1.1G
        raise ImageTooLarge(
            f"image is {image.width}x{image.height}: resizing it to {spec.resize} on its short "
            f"side gives {resized[0]}x{resized[1]}, more than {max_pixels} pixels"
        )
    return to_input(resize_and_crop(image, metadata.preprocessing), metadata.preprocessing)


def preprocess_many(
    images: list[bytes], metadata: ModelMetadata, *, max_pixels: int, min_side: int = 1
) -> list[npt.NDArray[np.float32]]:
    """Every image of one request, in order; the first bad one fails the request."""
    out = []
    for index, data in enumerate(images):
        try:
            out.append(preprocess(data, metadata, max_pixels=max_pixels, min_side=min_side))
        except BadRequest as err:
            if len(images) > 1:
                err.message = f"image {index}: {err.message}"
            raise
    return out
