"""Round trip across the contract: train with `training`, export, serve with `service`, compare.

A ResNet-18 (global-average-pool head, so it has a CAM) is trained briefly on real Fashion-MNIST
images, exported by `training.export` into a fresh repository, and served by the real service over
HTTP. The probabilities and feature maps the service answers for real PNG files must match PyTorch
on the same files, pushed through training's own evaluation transform.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from service.metadata import ModelMetadata
from service.settings import Settings
from tests.e2e.full_classify import classify_everything
from tests.service.server import threaded_server
from training.checkpoint import load_checkpoint, model_from_checkpoint, preprocessing_of
from training.data.idx import load_fashion_mnist
from training.data.transforms import eval_transform
from training.export import ExportConfig
from training.export import main as export_main
from training.onnx_io import FeatureMapModel

IMAGES = 6
PROBABILITY_TOLERANCE = 1e-4
MAP_RELATIVE_TOLERANCE = 2e-3  # float16 on the wire: 11-bit mantissa


@pytest.fixture(scope="module")
def exported(
    resnet18_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """(repository root, checkpoint) of a briefly trained ResNet-18."""
    root = tmp_path_factory.mktemp("roundtrip")
    export_main(
        ExportConfig(checkpoint=resnet18_checkpoint, name="resnet18-rt",
                     repository=root / "models", evaluate=False, parity_samples=8, threads=2)
    )  # fmt: skip
    return root / "models", resnet18_checkpoint


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.slow
def test_service_answers_what_pytorch_computes(exported: tuple[Path, Path]) -> None:
    repository, checkpoint = exported
    meta = ModelMetadata.model_validate_json(
        (repository / "resnet18-rt" / "1" / "metadata.json").read_text()
    )
    assert meta.cam is not None, "a GAP-headed model exports CAM weights"
    images, _ = load_fashion_mnist(train=False)
    files = [_png(images[i]) for i in range(IMAGES)]

    content = load_checkpoint(checkpoint)
    model = model_from_checkpoint(content).eval()
    layers = [fm.layer for fm in meta.feature_maps]
    wrapper = FeatureMapModel(model, layers).eval()
    transform = eval_transform(preprocessing_of(content))
    batch = torch.stack([transform(Image.open(io.BytesIO(f))) for f in files])
    with torch.no_grad():
        logits, *maps = wrapper(batch)
    expected_probs = torch.softmax(logits, dim=1).numpy()

    settings = Settings(model_repository=repository, default_model="resnet18-rt")
    layer = meta.feature_maps[-1]
    with threaded_server(settings) as base_url:
        response = classify_everything(base_url, "resnet18-rt", meta, files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == IMAGES
    torch_map = maps[-1].numpy()
    for i, result in enumerate(results):
        served = np.zeros(meta.num_classes)
        for p in result["predictions"]:
            served[p["index"]] = p["probability"]
            assert p["label"] == meta.labels[p["index"]]
        np.testing.assert_allclose(served, expected_probs[i], atol=PROBABILITY_TOLERANCE)
        assert result["predictions"][0]["index"] == int(expected_probs[i].argmax())

        (fmap,) = result["feature_maps"]
        assert fmap["layer"] == layer.layer
        assert fmap["format"] == "float16"
        raw = np.frombuffer(base64.b64decode(fmap["data"]), dtype="<f2").astype(np.float32)
        channels = fmap["channels"]
        served_map = raw.reshape(len(channels), *layer.shape[1:])
        reference = torch_map[i][channels]
        scale = max(1.0, float(np.abs(reference).max()))
        assert float(np.abs(served_map - reference).max()) / scale < MAP_RELATIVE_TOLERANCE

        cam = result["cam"]
        assert cam["label"] == result["predictions"][0]["label"]
        heatmap = Image.open(io.BytesIO(base64.b64decode(cam["data"])))
        assert heatmap.format == "PNG"
