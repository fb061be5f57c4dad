from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
import pytest

from service.errors import ModelNotFound
from service.manager import ModelManager
from service.metrics import Metrics
from service.settings import Settings
from tests.service.server import metric_value, threaded_server
from tests.service.tiny_model import random_png, write_tiny_model


def test_broken_version_is_reported_and_skipped(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_tiny_model(repo, "tiny-cnn", version=1)
    broken = write_tiny_model(repo, "tiny-cnn", version=2, seed=1)
    (broken.path / "model.onnx").write_bytes(b"not onnx")
    write_tiny_model(repo, "other", version=1)
    (repo / "other" / "1" / "metadata.json").write_text("{}")
    settings = Settings(model_repository=repo, default_model="tiny-cnn", models="tiny-cnn")
    with threaded_server(settings) as url, httpx.Client(base_url=url) as client:
        ready = client.get("/health/ready").json()
        assert ready["models"] == {"tiny-cnn": [1]}  # "other" is not configured: not loaded
        assert any("tiny-cnn/2" in e for e in ready["errors"])
        response = client.post(
            "/v1/classify", content=random_png(1), headers={"content-type": "image/png"}
        )
        assert response.json()["version"] == 1
        v2 = client.post(
            "/v1/models/tiny-cnn/versions/2/classify",
            content=random_png(1),
            headers={"content-type": "image/png"},
        )
        assert v2.status_code == 404
        metrics = client.get("/metrics").text
        assert metric_value(metrics, "convserve_model_ready", model="tiny-cnn", version="1") == 1
        ready_v2 = (
            'convserve_model_ready{model="tiny-cnn",provider="CPUExecutionProvider",version="2"}'
        )
        assert f"{ready_v2} 0.0" in metrics  # present and 0: the deploy alert fires on it


def test_model_with_only_broken_versions_is_not_ready(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_tiny_model(repo, "tiny-cnn")
    write_tiny_model(repo, "other")
    (repo / "other" / "1" / "metadata.json").write_text("{}")
    settings = Settings(model_repository=repo)
    with threaded_server(settings, ready=False) as url, httpx.Client(base_url=url) as client:
        for _ in range(400):
            ready = client.get("/health/ready")
            if ready.json()["status"] != "loading":
                break
            time.sleep(0.05)
        assert ready.status_code == 503
        assert ready.json()["missing"] == ["other"]
        ok = client.post(
            "/v1/models/tiny-cnn/classify",
            content=random_png(2),
            headers={"content-type": "image/png"},
        )
        assert ok.status_code == 200  # the others still serve


@pytest.mark.anyio
async def test_a_version_missing_from_one_scan_keeps_serving(tmp_path: Path) -> None:
    """An exporter replacing a version (rmtree, then rename) must not make it vanish."""
    repo = tmp_path / "models"
    model = write_tiny_model(repo, "tiny-cnn")
    manager = ModelManager(Settings(model_repository=repo, providers="cpu"), Metrics(gpu=False))
    await manager.sync()
    first = manager.get("tiny-cnn")
    aside = tmp_path / "aside"
    model.path.rename(aside)
    await manager.sync()  # one scan without it: still served
    assert manager.get("tiny-cnn") is first
    aside.rename(model.path)
    await manager.sync()  # back, unchanged: the same session
    assert manager.get("tiny-cnn") is first
    model.path.rename(aside)
    await manager.sync()
    await manager.sync()  # two scans without it: removed
    assert manager.versions("tiny-cnn") == []
    with pytest.raises(ModelNotFound):
        manager.get("tiny-cnn")
    await manager.close()


def test_a_default_model_that_is_not_loaded_is_warned_about(
    tiny_repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(model_repository=tiny_repo, default_model="no-such-model")
    with caplog.at_level("WARNING"), threaded_server(settings) as url:
        response = httpx.post(
            url + "/v1/classify", content=random_png(1), headers={"content-type": "image/png"}
        )
    assert response.status_code == 404
    assert any("CONVSERVE_DEFAULT_MODEL 'no-such-model'" in r.getMessage() for r in caplog.records)


def test_repository_problems_are_logged_and_listed_once_each(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A flat model.onnx, a version without metadata.json, one whose metadata has a bad field
    and one whose graph disagrees with it: each a warning or error in the log and one line in
    /health/ready's errors, naming its model version once and no value of the file."""
    repo = tmp_path / "models"
    write_tiny_model(repo, "tiny-cnn")
    flat = write_tiny_model(repo, "flat")
    (flat.path / "model.onnx").rename(repo / "flat" / "model.onnx")
    shutil.rmtree(flat.path)
    (write_tiny_model(repo, "no-meta").path / "metadata.json").unlink()
    bad = write_tiny_model(repo, "bad-field")
    metadata = json.loads((bad.path / "metadata.json").read_text())
    metadata["max_batch_size"] = -7
    (bad.path / "metadata.json").write_text(json.dumps(metadata))
    shape = write_tiny_model(repo, "bad-shape")  # found by the runtime's check, not the schema
    metadata = json.loads((shape.path / "metadata.json").read_text())
    metadata["feature_maps"][0]["shape"][0] += 1
    (shape.path / "metadata.json").write_text(json.dumps(metadata))
    settings = Settings(model_repository=repo, providers="cpu")
    with caplog.at_level("WARNING"), threaded_server(settings, ready=False) as url:
        for _ in range(400):
            ready = httpx.get(url + "/health/ready").json()
            if ready["status"] != "loading":
                break
            time.sleep(0.05)
    errors = sorted(ready["errors"])
    assert ready["models"] == {"tiny-cnn": [1]}
    assert len(errors) == 4, errors
    bad_field, bad_shape, flat_file, no_meta = errors
    assert bad_field == (
        "bad-field/1: invalid metadata.json: max_batch_size: Input should be greater than or "
        "equal to 1"
    )
    assert bad_shape == (
        "bad-shape/1: output fm.features.conv1 has shape (2, 4, 16, 16), metadata says "
        "(2, 5, 16, 16)"
    )
    assert flat_file.startswith("flat/model.onnx: ")
    assert "move it to flat/1/model.onnx with a metadata.json beside it" in flat_file
    assert "docs/repository.md" in flat_file
    assert no_meta.startswith("no-meta/1: metadata.json is missing beside model.onnx")
    logged = [r.getMessage() for r in caplog.records if r.levelname in {"WARNING", "ERROR"}]
    for error in errors:
        assert sum(error in line for line in logged) >= 1, error
    assert not any("-7" in line or "pydantic.dev" in line for line in logged)
    assert sum(flat_file in line for line in logged) == 1
