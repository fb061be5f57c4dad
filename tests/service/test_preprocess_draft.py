"""JPEG draft decoding: used only on JPEGs large enough, within the documented tolerance on real
photos (scikit-learn's, upscaled, and mosaics of them at native resolution), oriented right."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import Image

from service.metadata import ModelMetadata
from service.preprocess import DRAFT_MIN_RATIO, _draft, draft_scale, preprocess
from tests.conftest import REPO_ROOT
from tests.service.photos import photo, resnet_metadata
from tests.service.tiny_model import TinyModel

# The documented tolerance (bench/preprocess.py --tolerance), in 8-bit levels: |delta input| x
# std x 255. Worst measured on photos drafted to exactly DRAFT_MIN_RATIO x resize: max 8, mean
# 0.56; a quality-95 re-encode of the same photos moves them by max 5-6, mean 0.24-0.31.
MAX_LEVELS = 10
MEAN_LEVELS = 0.6
RESIZE = 256  # resnet_metadata's
MAX_PIXELS = 40_000_000


def jpeg(image: Image.Image, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, **kwargs)
    return buffer.getvalue()


def upscaled(name: str, size: tuple[int, int]) -> Image.Image:
    return photo(name).resize(size, Image.Resampling.BICUBIC)


def mosaic(size: tuple[int, int]) -> Image.Image:
    """Both photos tiled at their native resolution: real detail down to single pixels."""
    tiles = [photo("china.jpg"), photo("flower.jpg").transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    canvas = Image.new("RGB", size)
    tile_w, tile_h = tiles[0].size
    for top in range(0, size[1], tile_h):
        for left in range(0, size[0], tile_w):
            canvas.paste(tiles[(top // tile_h + left // tile_w) % 2], (left, top))
    return canvas


@pytest.fixture(scope="module")
def resnet(tiny_cnn: TinyModel) -> ModelMetadata:
    return resnet_metadata(tiny_cnn)


@pytest.fixture(scope="module")
def lenet() -> ModelMetadata:
    """The committed default model's metadata: greyscale, resize and crop 28."""
    path = REPO_ROOT / "models" / "lenet5-fashion" / "1" / "metadata.json"
    return ModelMetadata.model_validate_json(path.read_text())


Input = npt.NDArray[np.float32]


def exact_and_drafted(data: bytes, meta: ModelMetadata) -> tuple[Input, Input]:
    exact = preprocess(data, meta, max_pixels=MAX_PIXELS, jpeg_draft=False)
    drafted = preprocess(data, meta, max_pixels=MAX_PIXELS, jpeg_draft=True)
    return exact, drafted


def assert_within_tolerance(data: bytes, meta: ModelMetadata) -> None:
    exact, drafted = exact_and_drafted(data, meta)
    assert drafted.shape == exact.shape
    assert not np.array_equal(drafted, exact)  # it was drafted
    std = np.asarray(meta.preprocessing.std, dtype=np.float32)[:, None, None]
    diff = np.abs(drafted - exact) * std * 255  # in 8-bit levels
    assert diff.max() <= MAX_LEVELS
    assert diff.mean() <= MEAN_LEVELS


@pytest.mark.parametrize(
    ("size", "resize", "scale"),
    [
        ((640, 427), 256, 1),  # the benchmark photo: 1/2 would fall below 2.5 x 256
        ((1920, 1279), 256, 1),
        ((1920, 1280), 256, 2),  # drafted to exactly 2.5 x 256
        ((4032, 3024), 256, 4),  # a 12 MP phone photo
        ((3024, 4032), 256, 4),
        ((3840, 2559), 256, 2),
        ((8192, 4096), 256, 4),
        ((12800, 5120), 256, 8),
        ((139, 139), 28, 1),
        ((140, 140), 28, 2),
        ((4032, 3024), 28, 8),
    ],
)
def test_draft_scale_is_the_largest_keeping_the_short_side_at_the_ratio(
    size: tuple[int, int], resize: int, scale: int
) -> None:
    assert DRAFT_MIN_RATIO == 2.5
    assert draft_scale(*size, resize) == scale


@pytest.mark.parametrize(("size", "scale"), [((2304, 1536), 2), ((3075, 3073), 4)])
def test_draft_decodes_fewer_pixels(size: tuple[int, int], scale: int) -> None:
    with Image.open(io.BytesIO(jpeg(upscaled("china.jpg", size)))) as opened:
        extent = _draft(opened, "RGB", RESIZE)
        opened.load()
        assert opened.size == (-(-size[0] // scale), -(-size[1] // scale))  # libjpeg rounds up
    assert extent == (0, 0, size[0] / scale, size[1] / scale)


@pytest.mark.parametrize("name", ["china.jpg", "flower.jpg"])
def test_small_photos_are_never_drafted(resnet: ModelMetadata, name: str) -> None:
    exact, drafted = exact_and_drafted(jpeg(photo(name)), resnet)
    assert np.array_equal(exact, drafted)


def test_png_is_never_drafted(resnet: ModelMetadata) -> None:
    buffer = io.BytesIO()
    upscaled("flower.jpg", (2304, 1536)).save(buffer, format="PNG", compress_level=1)
    exact, drafted = exact_and_drafted(buffer.getvalue(), resnet)
    assert np.array_equal(exact, drafted)


@pytest.mark.parametrize(
    "image",
    [
        pytest.param(lambda: upscaled("china.jpg", (1919, 1280)), id="china-1919x1280-at-ratio"),
        pytest.param(lambda: upscaled("flower.jpg", (3079, 2053)), id="flower-3079x2053-odd"),
        pytest.param(lambda: mosaic((1920, 1280)), id="mosaic-1920x1280-at-ratio"),
        pytest.param(lambda: mosaic((3840, 2560)), id="mosaic-3840x2560-4x-at-ratio"),
        pytest.param(lambda: upscaled("flower.jpg", (4032, 3024)), id="flower-4032x3024-phone"),
    ],
)
def test_draft_within_tolerance_on_real_photos(
    resnet: ModelMetadata, image: Callable[[], Image.Image]
) -> None:
    assert_within_tolerance(jpeg(image()), resnet)


@pytest.mark.parametrize("orientation", range(2, 9))
def test_draft_applies_exif_orientation(resnet: ModelMetadata, orientation: int) -> None:
    """Drafted images are resized before they are turned upright: still the exact path's crop."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    assert_within_tolerance(jpeg(mosaic((3079, 2053)), exif=exif), resnet)


@pytest.mark.parametrize("size", [(280, 280), (840, 560)])
def test_greyscale_draft_within_tolerance(lenet: ModelMetadata, size: tuple[int, int]) -> None:
    """A greyscale model drafts the luma plane alone, with no RGB decode and convert("L"); both
    sizes are decoded to exactly 2.5 x 28 (at 1/4 and 1/8, DC coefficients alone)."""
    assert lenet.input.color_mode == "L"
    assert_within_tolerance(jpeg(mosaic(size)), lenet)


@pytest.mark.anyio
@pytest.mark.parametrize("draft", [True, False])
async def test_the_setting_reaches_the_decoder(tiny_repo: Path, draft: bool) -> None:
    """The service's classifier decodes with CONVSERVE_JPEG_DRAFT: its tensors are the drafted
    ones when on, the bit-exact ones when off."""
    from service.classify import Classifier
    from service.manager import ModelManager
    from service.metrics import Metrics
    from service.settings import Settings

    settings = Settings(model_repository=tiny_repo, models="tiny-rgb", jpeg_draft=draft)
    manager = ModelManager(settings, Metrics(gpu=False))
    await manager.sync()
    classifier = Classifier(settings, manager, Metrics(gpu=False))
    loaded = manager.get("tiny-rgb")
    side = int(DRAFT_MIN_RATIO * loaded.metadata.preprocessing.resize * 8)
    data = jpeg(upscaled("china.jpg", (side * 3 // 2, side)))
    (served,) = await classifier.preprocess(loaded, [data])
    drafted, exact = (
        preprocess(data, loaded.metadata, max_pixels=MAX_PIXELS, jpeg_draft=on)
        for on in (True, False)
    )
    assert not np.array_equal(drafted, exact)  # this photo is drafted when allowed
    np.testing.assert_array_equal(served, drafted if draft else exact)
    classifier.close()
    await manager.close()
