"""Real photographs for the preprocessing tests (scikit-learn's sample photos) and the metadata of
a model that takes them as a ResNet does."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from PIL import Image

from service.metadata import ModelMetadata
from tests.service.tiny_model import TinyModel

SKLEARN = importlib.util.find_spec("sklearn")
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def photo(name: str) -> Image.Image:
    """One of scikit-learn's sample photos (640x427 JPEGs), decoded, in RGB."""
    if SKLEARN is None or SKLEARN.origin is None:
        pytest.skip("scikit-learn (its sample photos) is not installed")
    with Image.open(Path(SKLEARN.origin).parent / "datasets" / "images" / name) as image:
        return image.convert("RGB")


def photo_bytes(name: str) -> bytes:
    assert SKLEARN is not None
    assert SKLEARN.origin is not None
    return (Path(SKLEARN.origin).parent / "datasets" / "images" / name).read_bytes()


def resnet_metadata(tiny_cnn: TinyModel) -> ModelMetadata:
    """tiny-cnn's metadata with a ResNet's preprocessing: RGB, resize 256, crop 224, ImageNet."""
    raw = tiny_cnn.metadata.model_dump()
    raw["input"] |= {"shape": [3, 224, 224], "color_mode": "RGB"}
    raw["preprocessing"] = {
        "resize": 256,
        "center_crop": 224,
        "interpolation": "bilinear",
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
    }
    return ModelMetadata.model_validate(raw)
