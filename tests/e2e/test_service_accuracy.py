"""Accuracy over HTTP on 500 Fashion-MNIST test images equals offline ONNX Runtime's."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
from PIL import Image

from service.metadata import ModelMetadata
from service.preprocess import resize_and_crop, to_input
from tests.conftest import REPO_ROOT, require_fashion_mnist, require_system_part
from tests.service.server import ServiceProcess
from training.data.idx import load_fashion_mnist

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
DEFAULT_MODEL = "lenet5-fashion"
IMAGES = 500
PER_REQUEST = 50


def newest_version(model_dir: Path) -> Path | None:
    versions = sorted(
        (int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()),
    )
    return model_dir / str(versions[-1]) if versions else None


def offline_inputs(images: npt.NDArray[np.uint8], meta: ModelMetadata) -> npt.NDArray[np.float32]:
    """(N, C, H, W) model inputs computed without the service where preprocessing is identity."""
    spec = meta.preprocessing
    _, height, width = images.shape
    if meta.input.color_mode == "L" and spec.resize == spec.center_crop == height == width:
        mean = np.float32(spec.mean[0])
        std = np.float32(spec.std[0])
        return ((images.astype(np.float32) / np.float32(255) - mean) / std)[:, None]
    # Otherwise the service's functions, themselves checked bit-exact against torchvision.
    return np.stack(
        [
            to_input(resize_and_crop(Image.fromarray(i).convert(meta.input.color_mode), spec), spec)
            for i in images
        ]
    )


def png(image: npt.NDArray[np.uint8]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def accuracy_over_http_and_offline(
    repository: Path, model: str, tmp_path: Path
) -> tuple[float, float, npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    version_dir = newest_version(repository / model)
    assert version_dir is not None
    meta = ModelMetadata.model_validate_json((version_dir / "metadata.json").read_text())
    images, labels = load_fashion_mnist(train=False)
    images, labels = images[:IMAGES], labels[:IMAGES]

    session = ort.InferenceSession(
        str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    inputs = offline_inputs(images, meta)
    logits = np.concatenate(
        [
            session.run([meta.output.name], {meta.input.name: inputs[i : i + 100]})[0]
            for i in range(0, IMAGES, 100)
        ]
    )
    offline = logits.argmax(axis=1)

    served: list[int] = []
    with (
        ServiceProcess(
            tmp_path / "service.log", model_repository=repository, models=model, providers="cpu"
        ) as service,
        httpx.Client(base_url=service.base_url, timeout=120) as client,
    ):
        for start in range(0, IMAGES, PER_REQUEST):
            files = [
                ("file", (f"{i}.png", png(images[i]), "image/png"))
                for i in range(start, start + PER_REQUEST)
            ]
            response = client.post(f"/v1/models/{model}/classify", files=files, params={"top_k": 1})
            assert response.status_code == 200, response.text
            served += [r["predictions"][0]["index"] for r in response.json()["results"]]
    http = np.asarray(served)
    return float((http == labels).mean()), float((offline == labels).mean()), http, offline


def test_default_model_accuracy_over_http_equals_offline(tmp_path: Path) -> None:
    repository = REPO_ROOT / "models"
    require_system_part(
        newest_version(repository / DEFAULT_MODEL) is not None,
        f"models/{DEFAULT_MODEL}",
        "make train-default (the default model is committed by the training pipeline)",
    )
    require_fashion_mnist()
    http_accuracy, offline_accuracy, http, offline = accuracy_over_http_and_offline(
        repository, DEFAULT_MODEL, tmp_path
    )
    assert http_accuracy == offline_accuracy
    assert (http == offline).all()
    assert http_accuracy > 0.8  # a trained model, not a broken one


def test_plain_command_serves_the_committed_default_model(tmp_path: Path) -> None:
    """`python -m service` with no settings (what `make serve` runs) serves ./models."""
    require_system_part(
        newest_version(REPO_ROOT / "models" / DEFAULT_MODEL) is not None,
        f"models/{DEFAULT_MODEL}",
        "make train-default (the default model is committed by the training pipeline)",
    )
    image = png(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8))
    with ServiceProcess(tmp_path / "service.log") as service:
        response = httpx.post(
            f"{service.base_url}/v1/classify", content=image, headers={"content-type": "image/png"}
        )
        assert response.status_code == 200, response.text
        assert response.json()["model"] == DEFAULT_MODEL
        assert len(response.json()["results"][0]["predictions"]) == 5
        assert f"loaded {DEFAULT_MODEL} version" in service.log()
