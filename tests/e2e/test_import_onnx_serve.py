"""Imported ONNX graphs served by the real service over HTTP: a torchvision ResNet-18 exported by
plain `torch.onnx.export` answers what the original graph computes, with a feature map per stage,
and a graph that only runs one image at a time (max_batch_size 1) loads, warms up and serves."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.metadata import ModelMetadata
from service.postprocess import softmax
from service.preprocess import preprocess
from service.settings import Settings
from tests.service.server import threaded_server
from tests.training.onnx_exports import (
    RESNET_MAPS,
    TINY_CLASSES,
    resnet_export,
    tiny_export,
    write_labels,
)
from training.import_onnx import PHOTO_DIR, ImportConfig, main
from training.labels import imagenet_categories
from training.onnx_check import ort_session, run_onnx

pytestmark = pytest.mark.slow
PROBABILITY_TOLERANCE = 1e-4
CHINA = PHOTO_DIR / "photo-china.jpg"
READY_TIMEOUT_S = 60.0


def metadata(folder: Path) -> ModelMetadata:
    return ModelMetadata.model_validate_json((folder / "metadata.json").read_text())


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Repository with resnet18-onnx (dynamic batch) and tiny-batch1 (a Reshape to one row);
    the original ONNX files under `sources`."""
    root = tmp_path_factory.mktemp("import-serve")
    sources = root / "sources"
    sources.mkdir()
    repo = root / "models"
    resnet = resnet_export("torchscript", sources / "resnet18.onnx")
    tiny = tiny_export(sources / "tiny.onnx", batch=1, batch_of_one=True)
    labels = write_labels(sources / "labels.txt", TINY_CLASSES)
    main(ImportConfig(resnet, "resnet18-onnx", repository=repo))
    main(ImportConfig(tiny, "tiny-batch1", repository=repo, labels=str(labels)))
    return {"repo": repo, "resnet": resnet}


@pytest.fixture(scope="module")
def base_url(imported: dict[str, Path]) -> Iterator[str]:
    settings = Settings(model_repository=imported["repo"], providers="cpu", max_queue_delay_ms=20)
    with threaded_server(settings) as url:  # waits for /health/ready: both models warmed up
        yield url


def test_resnet18_answers_what_the_original_graph_computes(
    imported: dict[str, Path], base_url: str
) -> None:
    meta = metadata(imported["repo"] / "resnet18-onnx" / "1")
    data = CHINA.read_bytes()
    image = preprocess(data, meta, max_pixels=Settings().max_image_pixels)
    session = ort_session(imported["resnet"])
    logits = run_onnx(session, image[None])[session.get_outputs()[0].name][0]
    expected = softmax(logits)

    response = httpx.post(
        f"{base_url}/v1/models/resnet18-onnx/classify",
        content=data,
        headers={"content-type": "image/jpeg"},
        params={"top_k": 5, "feature_maps": "all", "map_format": "float16", "cam": "true"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    (result,) = response.json()["results"]
    top = result["predictions"]
    assert top[0]["label"] == imagenet_categories()[int(np.argmax(logits))]
    for prediction in top:
        assert prediction["probability"] == pytest.approx(
            float(expected[prediction["index"]]), abs=PROBABILITY_TOLERANCE
        )
    assert [tuple(m["shape"]) for m in result["feature_maps"]] == list(RESNET_MAPS.values())
    assert [m["layer"] for m in result["feature_maps"]] == list(RESNET_MAPS)
    assert result["cam"]["label"] == top[0]["label"]


def test_stage_maps_by_layer_name(base_url: str) -> None:
    response = httpx.post(
        f"{base_url}/v1/models/resnet18-onnx/classify",
        content=CHINA.read_bytes(),
        headers={"content-type": "image/jpeg"},
        params={"feature_maps": "layer2.1.relu_1,relu", "channels": 4},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    maps = response.json()["results"][0]["feature_maps"]
    assert [(m["layer"], len(m["channels"])) for m in maps] == [
        ("layer2.1.relu_1", 4),
        ("relu", 4),
    ]


def test_model_of_batch_one_is_ready_and_serves_concurrent_requests(
    imported: dict[str, Path], base_url: str
) -> None:
    assert metadata(imported["repo"] / "tiny-batch1" / "1").max_batch_size == 1
    ready = httpx.get(f"{base_url}/health/ready", timeout=10)
    assert ready.status_code == 200
    assert ready.json()["models"]["tiny-batch1"] == [1]

    def classify(_: int) -> int:
        response = httpx.post(
            f"{base_url}/v1/models/tiny-batch1/classify",
            content=CHINA.read_bytes(),
            headers={"content-type": "image/jpeg"},
            timeout=60,
        )
        return response.status_code

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(classify, range(8))) == [200] * 8


def test_failed_warm_up_is_a_failed_load_not_a_silent_hang(
    imported: dict[str, Path], tmp_path: Path
) -> None:
    # The batch-of-one graph with metadata promising batches of 8: warm-up runs 2 images, which
    # ONNX Runtime refuses (InvalidArgument). The version must be reported, not stay "loading".
    repo = tmp_path / "models"
    shutil.copytree(imported["repo"] / "tiny-batch1", repo / "tiny-batch1")
    meta_path = repo / "tiny-batch1" / "1" / "metadata.json"
    content = json.loads(meta_path.read_text())
    content["max_batch_size"] = 8
    meta_path.write_text(json.dumps(content))
    with threaded_server(Settings(model_repository=repo, providers="cpu"), ready=False) as url:
        deadline = time.monotonic() + READY_TIMEOUT_S
        body = httpx.get(f"{url}/health/ready", timeout=10).json()
        while body["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
            body = httpx.get(f"{url}/health/ready", timeout=10).json()
    assert body["status"] == "not_ready"
    (error,) = body["errors"]
    assert error.startswith("tiny-batch1/1: warm-up failed:")
    assert "Got: 2 Expected: 1" in error
