from __future__ import annotations

import importlib.util
import io

import numpy as np
import pytest
from PIL import Image

from service.errors import ImageTooLarge, InvalidImage
from service.metadata import Preprocessing
from service.preprocess import decode, preprocess, resize_and_crop, resize_size, to_input
from tests.service.tiny_model import TinyModel


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def gradient(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float64)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float64)[:, None, None]
    rgb = np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2)
    return Image.fromarray(rgb.astype(np.uint8))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_allowed_formats_decode(fmt: str) -> None:
    image = decode(encode(gradient(20, 10), fmt), color_mode="RGB", max_pixels=10_000)
    assert image.mode == "RGB"
    assert image.size == (20, 10)


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "TIFF"])
def test_other_formats_are_refused(fmt: str) -> None:
    with pytest.raises(InvalidImage):
        decode(encode(gradient(8, 8), fmt), color_mode="RGB", max_pixels=10_000)


@pytest.mark.parametrize("data", [b"", b"not an image", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_garbage_is_invalid(data: bytes) -> None:
    with pytest.raises(InvalidImage):
        decode(data, color_mode="L", max_pixels=10_000)


def test_truncated_png_is_invalid() -> None:
    data = encode(gradient(64, 64), "PNG")
    with pytest.raises(InvalidImage):
        decode(data[: len(data) // 2], color_mode="RGB", max_pixels=100_000)


def test_pixel_limit() -> None:
    with pytest.raises(ImageTooLarge):
        decode(encode(gradient(100, 100), "PNG"), color_mode="RGB", max_pixels=9_999)


def test_exif_orientation_is_applied() -> None:
    image = gradient(30, 10)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    decoded = decode(encode(image, "JPEG", exif=exif), color_mode="RGB", max_pixels=10_000)
    assert decoded.size == (10, 30)


def test_mode_conversion() -> None:
    rgba = Image.new("RGBA", (5, 5), (10, 200, 30, 128))
    assert decode(encode(rgba, "PNG"), color_mode="L", max_pixels=100).mode == "L"
    grey = Image.new("L", (5, 5), 77)
    rgb = decode(encode(grey, "PNG"), color_mode="RGB", max_pixels=100)
    assert rgb.getpixel((0, 0)) == (77, 77, 77)


@pytest.mark.parametrize(
    ("size", "expected"), [((33, 20), (46, 28)), ((20, 33), (28, 46)), ((28, 28), (28, 28))]
)
def test_resize_size_matches_torchvision_rule(
    size: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert resize_size(*size, 28) == expected


def test_normalisation_values() -> None:
    spec = Preprocessing(resize=2, center_crop=2, mean=[0.5], std=[0.25])
    out = to_input(Image.new("L", (2, 2), 255), spec)
    assert out.shape == (1, 2, 2)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 2.0)


def test_preprocess_shape(tiny_cnn: TinyModel) -> None:
    out = preprocess(encode(gradient(37, 23), "PNG"), tiny_cnn.metadata, max_pixels=10_000)
    assert out.shape == tiny_cnn.metadata.input.shape


TORCHVISION = importlib.util.find_spec("torchvision") is not None


@pytest.mark.skipif(not TORCHVISION, reason="torchvision is not installed")
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear", "bicubic"])
@pytest.mark.parametrize(
    ("size", "mode"), [((37, 23), "RGB"), ((23, 37), "L"), ((64, 64), "RGB"), ((28, 28), "L")]
)
def test_bit_exact_with_torchvision(interpolation: str, size: tuple[int, int], mode: str) -> None:
    """The only test that imports torch: the service's numpy pipeline equals torchvision's."""
    from torchvision import transforms
    from torchvision.transforms import InterpolationMode

    resize, crop = 28, 24
    channels = 3 if mode == "RGB" else 1
    spec = Preprocessing(
        resize=resize,
        center_crop=crop,
        interpolation=interpolation,  # type: ignore[arg-type]
        mean=[0.485, 0.456, 0.406][:channels],
        std=[0.229, 0.224, 0.225][:channels],
    )
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    reference = transforms.Compose(
        [
            transforms.Resize(resize, interpolation=InterpolationMode(interpolation)),
            transforms.CenterCrop(crop),
            transforms.ToTensor(),
            transforms.Normalize(spec.mean, spec.std),
        ]
    )(image)
    ours = to_input(resize_and_crop(image, spec), spec)
    assert ours.shape == tuple(reference.shape)
    assert np.array_equal(ours, reference.numpy())
