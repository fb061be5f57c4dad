"""An `--int8` version served by the real service over HTTP like any other: the model detail shows
its precision, and classify answers what ONNX Runtime computes with the int8 graph, with feature
maps and a class activation map (a ResNet-18, briefly trained on real Fashion-MNIST images)."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service.metadata import ModelMetadata
from service.postprocess import softmax
from service.preprocess import preprocess
from service.settings import Settings
from tests.e2e.full_classify import classify_everything
from tests.service.server import threaded_server
from training.data.idx import load_fashion_mnist
from training.export import ExportConfig
from training.export import main as export_main
from training.onnx_check import ort_session, run_onnx

pytestmark = pytest.mark.slow
IMAGES = 4
PROBABILITY_TOLERANCE = 1e-4
MAP_RELATIVE_TOLERANCE = 2e-3  # float16 on the wire: 11-bit mantissa


@pytest.fixture(scope="module")
def repository(resnet18_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository holding resnet18-int8/1: one epoch on 256 images, quantized. So brief a
    training leaves logits too close for the accuracy gate, which this export overrides."""
    root = tmp_path_factory.mktemp("int8-serve")
    export_main(
        ExportConfig(checkpoint=resnet18_checkpoint, name="resnet18-int8",
                     repository=root / "models", evaluate=False, parity_samples=8, threads=2,
                     int8=True, calibration=32, gate_images=64, accept_accuracy_loss=True)
    )  # fmt: skip
    return root / "models"


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_int8_version_serves_feature_maps_and_cam(repository: Path) -> None:
    folder = repository / "resnet18-int8" / "1"
    meta = ModelMetadata.model_validate_json((folder / "metadata.json").read_text())
    assert meta.export.precision == "int8"
    assert meta.cam is not None
    images, _ = load_fashion_mnist(train=False)
    files = [png(images[i]) for i in range(IMAGES)]
    batch = np.stack([preprocess(f, meta, max_pixels=Settings().max_image_pixels) for f in files])
    layer = meta.feature_maps[-1]
    expected = run_onnx(ort_session(folder / "model.onnx"), batch, ["logits", layer.output])

    with threaded_server(Settings(model_repository=repository, providers="cpu")) as url:
        detail = httpx.get(f"{url}/v1/models/resnet18-int8", timeout=30).json()
        response = classify_everything(url, "resnet18-int8", meta, files)
    assert detail["precision"] == "int8"
    assert [tuple(m["shape"]) for m in detail["feature_maps"]] == [
        fm.shape for fm in meta.feature_maps
    ]
    assert detail["cam"] is True
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == IMAGES
    for i, result in enumerate(results):
        served = np.zeros(meta.num_classes)
        for p in result["predictions"]:
            served[p["index"]] = p["probability"]
        want = softmax(expected["logits"][i])
        np.testing.assert_allclose(served, want, atol=PROBABILITY_TOLERANCE)
        (fmap,) = result["feature_maps"]
        raw = np.frombuffer(base64.b64decode(fmap["data"]), dtype="<f2").astype(np.float32)
        served_map = raw.reshape(len(fmap["channels"]), *layer.shape[1:])
        reference = expected[layer.output][i][fmap["channels"]]
        scale = max(1.0, float(np.abs(reference).max()))
        assert float(np.abs(served_map - reference).max()) / scale < MAP_RELATIVE_TOLERANCE
        cam = result["cam"]
        assert cam["label"] == result["predictions"][0]["label"]
        assert Image.open(io.BytesIO(base64.b64decode(cam["data"]))).format == "PNG"
