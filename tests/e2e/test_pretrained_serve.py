"""Pretrained torchvision weights → training.export --weights → the real service over HTTP.

For each architecture a state dict is saved here in torchvision's exact format under the file
name torchvision publishes (random weights: nothing is downloaded; the head is scaled so the
probabilities are far from uniform). The service's answer for real photos (scikit-learn's
china.jpg and flower.jpg, sent as JPEG files) must equal the torchvision model on
`weights.transforms()` of the same PIL image, the way torchvision's docs classify a photo.

CI covers resnet18, efficientnet_b0 and convnext_tiny; CONVSERVE_TEST_ALL_PRETRAINED=1 adds
alexnet, vgg16, vgg19, resnet50 and resnet152 (several minutes and ~2 GB of files).
"""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from service.metadata import ModelMetadata
from service.settings import Settings
from tests.service.server import threaded_server
from training.data.photos import PHOTO_NAMES
from training.export import ExportConfig
from training.export import main as export_main
from training.pretrained import weights_enum

CI_ARCHS = ("resnet18", "efficientnet_b0", "convnext_tiny")
ALL_ARCHS = ("alexnet", "vgg16", "vgg19", "resnet18", "resnet50", "resnet152",
             "efficientnet_b0", "convnext_tiny")  # fmt: skip
ARCHS = ALL_ARCHS if os.environ.get("CONVSERVE_TEST_ALL_PRETRAINED") == "1" else CI_ARCHS
PROBABILITY_TOLERANCE = 1e-4
LOGIT_STD = 3.0  # the head is scaled to this spread of logits on the first photo
TOP_K = 5


@dataclass(frozen=True)
class Exported:
    arch: str
    name: str
    expected: np.ndarray  # (photos, 1000) probabilities from torchvision
    export_s: float


def photo_bytes(name: str) -> bytes:
    from sklearn.datasets import images

    return (Path(images.__file__).parent / name).read_bytes()


def _scaled_model(arch: str, photos: list[Image.Image]) -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.get_model(arch).eval()
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    transform = weights_enum(arch).DEFAULT.transforms()  # type: ignore[union-attr]
    with torch.no_grad():
        spread = float(model(transform(photos[0])[None]).std())
        head.weight *= LOGIT_STD / spread
        head.bias *= LOGIT_STD / spread
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Exported]]:
    root = tmp_path_factory.mktemp("pretrained")
    photos = [Image.open(io.BytesIO(photo_bytes(n))).convert("RGB") for n in PHOTO_NAMES]
    done = []
    for arch in ARCHS:
        entry = weights_enum(arch).DEFAULT  # type: ignore[union-attr]
        model = _scaled_model(arch, photos)
        path = root / "weights" / Path(entry.url).name
        path.parent.mkdir(exist_ok=True)
        torch.save(model.state_dict(), path)
        with torch.no_grad():
            batch = torch.stack([entry.transforms()(p) for p in photos])
            expected = torch.softmax(model(batch), dim=1).numpy()
        del model
        started = time.perf_counter()
        export_main(
            ExportConfig(name=f"{arch}-imagenet", weights=str(path), arch=arch,
                         repository=root / "models", parity_samples=4)
        )  # fmt: skip
        done.append(Exported(arch, f"{arch}-imagenet", expected, time.perf_counter() - started))
        path.unlink()
    return root / "models", done


@pytest.fixture(scope="module")
def base_url(exported: tuple[Path, list[Exported]]) -> str:
    repository, models = exported
    settings = Settings(model_repository=repository, default_model=models[0].name)
    with threaded_server(settings) as url:
        yield url  # type: ignore[misc]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_served_photo_equals_torchvision(
    arch: str, exported: tuple[Path, list[Exported]], base_url: str
) -> None:
    repository, models = exported
    model = next(m for m in models if m.arch == arch)
    meta = ModelMetadata.model_validate_json(
        (repository / model.name / "1" / "metadata.json").read_text()
    )
    entry = weights_enum(arch).DEFAULT  # type: ignore[union-attr]
    assert meta.labels == list(entry.meta["categories"])
    assert meta.source is not None
    assert meta.source.name is None  # random weights: not the published file
    assert meta.source.file == Path(entry.url).name
    layers = [fm.layer for fm in meta.feature_maps]
    assert len(layers) >= 4, layers
    response = httpx.post(
        f"{base_url}/v1/models/{model.name}/classify",
        params={"top_k": TOP_K, "feature_maps": "all", "channels": 2, "cam": "true"},
        files=[("file", (n, photo_bytes(n), "image/jpeg")) for n in PHOTO_NAMES],
        timeout=120,
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    for expected, result in zip(model.expected, results, strict=True):
        predictions = result["predictions"]
        assert [p["index"] for p in predictions] == list(np.argsort(-expected)[:TOP_K])
        assert predictions[0]["label"] == entry.meta["categories"][int(expected.argmax())]
        served = np.array([p["probability"] for p in predictions])
        np.testing.assert_allclose(
            served, expected[[p["index"] for p in predictions]], atol=PROBABILITY_TOLERANCE
        )
        assert [fm["layer"] for fm in result["feature_maps"]] == layers
        assert (result["cam"] is not None) == (meta.cam is not None)


def test_cam_and_filters_for_gap_heads(exported: tuple[Path, list[Exported]]) -> None:
    repository, models = exported
    for model in models:
        meta = ModelMetadata.model_validate_json(
            (repository / model.name / "1" / "metadata.json").read_text()
        )
        assert meta.filters
        assert meta.filters[0].shape[1] == 3
        if not model.arch.startswith(("alexnet", "vgg")):
            assert meta.cam is not None, model.arch
