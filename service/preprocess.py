"""Image decoding and preprocessing, bit-exact with the torchvision transforms used in training.

Pipeline (metadata.preprocessing): decode (JPEG, PNG or WebP only) -> EXIF orientation ->
`convert(color_mode)` -> Resize(resize) -> CenterCrop(center_crop) -> /255 -> (x - mean) / std.
Runs in a worker thread: nothing here touches the event loop.
"""

from __future__ import annotations

import io

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from service.errors import ImageTooLarge, InvalidImage
from service.metadata import ModelMetadata, Preprocessing

# JPEG, PNG and WebP cover cameras, screenshots and the web; other Pillow plugins (TIFF, BMP,
# PSD, EPS, ...) are attack surface without a use here. GIF is refused: animated, palette-only.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP")
RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


def decode(data: bytes, *, color_mode: str, max_pixels: int) -> Image.Image:
    """Decode an encoded image, apply EXIF orientation, convert to `color_mode` ("L" or "RGB")."""
    if not data:
        raise InvalidImage("empty image")
    try:
        # Pillow's own bomb check (a warning above Image.MAX_IMAGE_PIXELS, an error above twice
        # that) is global state; the per-setting limit is checked here, before pixels decode.
        opened = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        width, height = opened.size
        if width * height > max_pixels:
            raise ImageTooLarge(
                f"image is {width}x{height} pixels, more than the {max_pixels} allowed"
            )
        opened.load()
        return ImageOps.exif_transpose(opened).convert(color_mode)
    except UnidentifiedImageError as err:
        raise InvalidImage(f"not a {'/'.join(ALLOWED_FORMATS)} image") from err
    except Image.DecompressionBombError as err:
        raise ImageTooLarge(str(err)) from err
    except (OSError, ValueError, SyntaxError) as err:  # truncated or corrupt image data
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


def preprocess(data: bytes, metadata: ModelMetadata, *, max_pixels: int) -> npt.NDArray[np.float32]:
    """Encoded image bytes -> the model's (C, H, W) float32 input."""
    image = decode(data, color_mode=metadata.input.color_mode, max_pixels=max_pixels)
    return to_input(resize_and_crop(image, metadata.preprocessing), metadata.preprocessing)


def preprocess_many(
    images: list[bytes], metadata: ModelMetadata, *, max_pixels: int
) -> list[npt.NDArray[np.float32]]:
    """Every image of one request, in order; the first bad one fails the request."""
    out = []
    for index, data in enumerate(images):
        try:
            out.append(preprocess(data, metadata, max_pixels=max_pixels))
        except (InvalidImage, ImageTooLarge) as err:
            if len(images) > 1:
                err.message = f"image {index}: {err.message}"
            raise
    return out
