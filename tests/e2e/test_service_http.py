"""`python -m service` in a subprocess on a free loopback port, driven over real HTTP."""

from __future__ import annotations

import base64
import io
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service.metadata import ModelMetadata
from tests.e2e.burst import burst
from tests.service.server import ServiceProcess, metric_value
from tests.service.tiny_model import random_png, write_tiny_model

pytestmark = pytest.mark.slow
CONCURRENT_CLIENTS = 16


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_tiny_model(root, "tiny-cnn")
    # Heavier (a few ms per image on CPU) so that concurrent requests meet a busy runtime.
    write_tiny_model(root, "tiny-slow", size=128, conv1=32, conv2=128, seed=3)
    return root


@pytest.fixture(scope="module")
def service(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    log = tmp_path_factory.mktemp("logs") / "service.log"
    with ServiceProcess(
        log,
        model_repository=repo,
        default_model="tiny-cnn",
        providers="cpu",
        max_queue_delay_ms=20,
    ) as process:
        yield process


def metadata(repo: Path, name: str) -> ModelMetadata:
    return ModelMetadata.model_validate_json((repo / name / "1" / "metadata.json").read_text())


def test_startup_log_shows_settings_provider_and_models(service: ServiceProcess) -> None:
    log = service.log()
    assert '"max_batch_size": 32' in log
    assert "execution provider: CPUExecutionProvider" in log
    assert "loaded tiny-cnn version 1" in log
    assert "loaded tiny-slow version 1" in log


def test_feature_maps_have_metadata_shapes(service: ServiceProcess, repo: Path) -> None:
    meta = metadata(repo, "tiny-cnn")
    for map_format in ("png", "float16"):
        response = httpx.post(
            f"{service.base_url}/v1/models/tiny-cnn/classify",
            content=random_png(1),
            headers={"content-type": "image/png"},
            params={"feature_maps": "all", "map_format": map_format, "channels": 64},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        maps = response.json()["results"][0]["feature_maps"]
        assert [m["layer"] for m in maps] == [fm.layer for fm in meta.feature_maps]
        for entry, fm in zip(maps, meta.feature_maps, strict=True):
            channels, height, width = fm.shape
            assert tuple(entry["shape"]) == fm.shape
            assert sorted(entry["channels"]) == list(range(channels))
            data = base64.b64decode(entry["data"])
            if map_format == "float16":
                values = np.frombuffer(data, dtype="<f2").reshape(channels, height, width)
                assert float(values.max()) == pytest.approx(entry["max"], rel=1e-2, abs=1e-2)
            else:
                rows, cols = entry["grid"]
                sheet = Image.open(io.BytesIO(data))
                assert sheet.format == "PNG"
                assert sheet.size == (cols * (width + 1) - 1, rows * (height + 1) - 1)


def test_concurrent_requests_are_batched(service: ServiceProcess) -> None:
    url = "/v1/models/tiny-slow/classify"
    # Arriving at once: those after the first find the instance busy and wait to share a batch.
    answers = burst(service.base_url, url, random_png(7, size=(128, 128)), CONCURRENT_CLIENTS)
    assert [code for code, _ in answers] == [200] * CONCURRENT_CLIENTS
    text = httpx.get(f"{service.base_url}/metrics").text
    runs = metric_value(text, "convserve_batch_size_count", model="tiny-slow")
    batched = metric_value(text, "convserve_batch_size_sum", model="tiny-slow")
    assert batched == CONCURRENT_CLIENTS
    assert runs < CONCURRENT_CLIENTS  # some session.run calls took more than one image
    assert batched / runs > 1


def test_malformed_multipart_bodies_do_not_fill_the_log(service: ServiceProcess) -> None:
    """Each is a 400 for its client; none adds a line to the server's log."""
    before = service.log().count("\n")
    for _ in range(20):
        answer = httpx.post(
            f"{service.base_url}/v1/classify",
            content=b"not multipart at all",
            headers={"content-type": "multipart/form-data; boundary=xyz"},
        )
        assert answer.status_code == 400, answer.text
    added = service.log().splitlines()[before:]
    assert not [line for line in added if "multipart" in line], added[:3]


def test_sigterm_exits_cleanly(repo: Path, tmp_path: Path) -> None:
    with ServiceProcess(tmp_path / "s.log", model_repository=repo, providers="cpu") as process:
        process.terminate()
        # uvicorn shuts down gracefully, then re-raises the signal it caught: -SIGTERM.
        assert process.process.wait(timeout=30) in {0, -signal.SIGTERM}
        assert "every accepted request answered" in process.log()
