from __future__ import annotations

import importlib.util
import io
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from service.errors import ImageTooLarge, ImageTooSmall, InvalidImage, UnsupportedImage
from service.metadata import ModelMetadata, Preprocessing
from service.preprocess import (
    configure_pillow,
    decode,
    preprocess,
    resize_and_crop,
    resize_size,
    to_input,
)
from tests.badinputs import animated, encode, noise
from tests.conftest import REPO_ROOT
from tests.service.photos import IMAGENET_MEAN, IMAGENET_STD, photo, photo_bytes, resnet_metadata
from tests.service.tiny_model import TinyModel

TORCHVISION = importlib.util.find_spec("torchvision") is not None
EXIF_ORIENTATION_TAG = 0x0112


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


def test_bomb_header_is_refused_with_the_configured_limit() -> None:
    """Pillow's guard fires on open; the message names our limit, not Pillow's 2x of it."""
    data = bytearray(encode(gradient(28, 28), "PNG"))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = (100_000).to_bytes(4, "big") * 2
    data[ihdr + 17 : ihdr + 21] = zlib.crc32(bytes(data[ihdr : ihdr + 17])).to_bytes(4, "big")
    configure_pillow(40_000_000)
    with pytest.raises(ImageTooLarge) as refused:
        decode(bytes(data), color_mode="RGB", max_pixels=40_000_000)
    assert refused.value.message == (
        "image (10000000000 pixels) has more than the 40000000 pixels allowed"
    )


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    values = np.array([[0, 257, 32896, 65535]] * 8, dtype=np.uint16)
    image = decode(encode(Image.fromarray(values), "PNG"), color_mode="L", max_pixels=10_000)
    assert np.asarray(image)[0].tolist() == [0, 1, 128, 255]


def test_palette_with_alpha_and_la_convert() -> None:
    palette = noise(16, 16).convert("P")
    palette.info["transparency"] = 0
    assert decode(encode(palette, "PNG"), color_mode="RGB", max_pixels=10_000).mode == "RGB"
    la = decode(encode(noise(16, 16, "LA"), "PNG"), color_mode="L", max_pixels=10_000)
    assert la.mode == "L"


def test_cmyk_jpeg_converts() -> None:
    cmyk = noise(16, 16, "CMYK")
    assert decode(encode(cmyk, "JPEG"), color_mode="RGB", max_pixels=10_000).mode == "RGB"


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_animated_images_are_refused(fmt: str) -> None:
    with pytest.raises(UnsupportedImage, match="animated"):
        decode(animated(fmt), color_mode="RGB", max_pixels=10_000)


def test_minimum_side() -> None:
    with pytest.raises(ImageTooSmall):
        decode(encode(noise(4, 30), "PNG"), color_mode="L", max_pixels=10_000, min_side=8)
    assert decode(encode(noise(8, 8), "PNG"), color_mode="L", max_pixels=100, min_side=8)


def test_exif_orientation_is_applied() -> None:
    image = gradient(30, 10)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    decoded = decode(encode(image, "JPEG", exif=exif), color_mode="RGB", max_pixels=10_000)
    assert decoded.size == (10, 30)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_as_pillow_applies_it(orientation: int) -> None:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION_TAG] = orientation
    data = encode(gradient(30, 10), "PNG", exif=exif)
    with Image.open(io.BytesIO(data)) as opened:
        expected = ImageOps.exif_transpose(opened)
    decoded = decode(data, color_mode="RGB", max_pixels=10_000)
    assert np.array_equal(np.asarray(decoded), np.asarray(expected))


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


def test_normalisation_needs_one_mean_per_channel() -> None:
    spec = Preprocessing(resize=2, center_crop=2, mean=[0.5], std=[0.25])
    with pytest.raises(ValueError, match="3 image channels"):
        to_input(Image.new("RGB", (2, 2)), spec)


def test_preprocess_shape(tiny_cnn: TinyModel) -> None:
    out = preprocess(encode(gradient(37, 23), "PNG"), tiny_cnn.metadata, max_pixels=10_000)
    assert out.shape == tiny_cnn.metadata.input.shape


def test_fashion_mnist_png_is_pixels_scaled_and_normalised() -> None:
    """The default model's path: a 28x28 greyscale PNG is only /255 and (x - mean) / std."""
    meta_path = REPO_ROOT / "models" / "lenet5-fashion" / "1" / "metadata.json"
    meta = ModelMetadata.model_validate_json(meta_path.read_text())
    samples = sorted((REPO_ROOT / "service" / "static" / "samples").glob("fashion-*.png"))
    assert samples
    for path in samples:
        with Image.open(path) as image:
            pixels = np.asarray(image, dtype=np.uint8)
        mean, std = np.float32(meta.preprocessing.mean[0]), np.float32(meta.preprocessing.std[0])
        expected = ((pixels.astype(np.float32) / np.float32(255) - mean) / std)[None]
        out = preprocess(path.read_bytes(), meta, max_pixels=10_000)
        assert np.array_equal(out, expected)


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
        mean=IMAGENET_MEAN[:channels],
        std=IMAGENET_STD[:channels],
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


@pytest.mark.skipif(not TORCHVISION, reason="torchvision is not installed")
@pytest.mark.parametrize(("name", "size"), [("china.jpg", None), ("flower.jpg", (2304, 1536))])
def test_photos_bit_exact_with_torchvision(
    tiny_cnn: TinyModel, name: str, size: tuple[int, int] | None
) -> None:
    """Whole photos through `preprocess`: the benchmark's 640x427 JPEG with the defaults (too
    small to draft), a photo large enough to draft with `jpeg_draft=False`."""
    from torchvision import transforms

    image = photo(name)
    data = photo_bytes(name)
    if size is not None:
        image = image.resize(size, Image.Resampling.BICUBIC)
        data = encode(image, "JPEG", quality=90)
        with Image.open(io.BytesIO(data)) as reopened:
            image = reopened.convert("RGB")
    meta = resnet_metadata(tiny_cnn)
    reference = transforms.Compose(
        [
            transforms.Resize(256),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )(image)
    ours = preprocess(data, meta, max_pixels=10**8, jpeg_draft=size is None)
    assert np.array_equal(ours, reference.numpy())
