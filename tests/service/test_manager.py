from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import onnx
import pytest
from onnx import TensorProto, helper

from service.errors import ModelNotFound
from service.manager import ModelManager
from service.metrics import Metrics
from service.settings import Settings
from tests.service.server import metric_value, threaded_server
from tests.service.tiny_model import NUM_CLASSES, random_png, rewrite_model, write_tiny_model

PNG = {"content-type": "image/png"}


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


def write_fixed_batch_model(repo: Path, name: str, max_batch_size: int) -> Path:
    """A tiny model whose graph takes exactly one image (batch axis fixed at 1)."""
    folder = write_tiny_model(repo, name).path
    model = onnx.load(folder / "model.onnx")
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.checker.check_model(model)
    rewrite_model(folder, model, max_batch_size=max_batch_size)
    return folder


def write_zipmap_model(repo: Path, name: str) -> Path:
    """A tiny model whose `logits` output is a sequence of {class: score} maps, as ONNX
    exports of scikit-learn classifiers give: ONNX Runtime runs it, numpy cannot make a tensor
    of it (TypeError), a failure no ONNX Runtime error type covers."""
    folder = write_tiny_model(repo, name).path
    model = onnx.load(folder / "model.onnx")
    graph = model.graph
    gemm = next(node for node in graph.node if node.output[0] == "logits")
    gemm.output[0] = "scores"
    graph.node.append(
        helper.make_node(
            "ZipMap",
            ["scores"],
            ["logits"],
            domain="ai.onnx.ml",
            classlabels_int64s=list(range(NUM_CLASSES)),
        )
    )
    score_map = helper.make_map_type_proto(
        TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])
    )
    logits = next(value for value in graph.output if value.name == "logits")
    logits.CopyFrom(helper.make_value_info("logits", helper.make_sequence_type_proto(score_map)))
    model.opset_import.append(helper.make_opsetid("ai.onnx.ml", 3))
    onnx.checker.check_model(model)
    rewrite_model(folder, model)
    return folder


def _settled(url: str) -> httpx.Response:
    """/health/ready once the initial load has ended (bounded: 20 s)."""
    for _ in range(400):
        ready = httpx.get(url + "/health/ready")
        if ready.json()["status"] != "loading":
            return ready
        time.sleep(0.05)
    raise AssertionError(f"still loading: {ready.text}")


def test_a_fixed_batch_model_is_warmed_and_served_one_image_at_a_time(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_fixed_batch_model(repo, "fixed", max_batch_size=1)
    settings = Settings(model_repository=repo, default_model="fixed", providers="cpu")
    images = [random_png(seed) for seed in range(8)]
    with threaded_server(settings) as url:
        with ThreadPoolExecutor(len(images)) as pool:  # at once: they would batch if they could
            answers = list(
                pool.map(
                    lambda png: httpx.post(url + "/v1/classify", content=png, headers=PNG), images
                )
            )
        metrics = httpx.get(url + "/metrics").text
    assert [a.status_code for a in answers] == [200] * len(images)
    batches = metric_value(metrics, "convserve_batch_size_count", model="fixed")
    assert batches >= len(images)  # warm-up batches counted or not, never two images in one
    assert metric_value(metrics, "convserve_batch_size_bucket", model="fixed", le="1.0") == batches


def test_any_exception_while_loading_is_that_versions_reported_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A TypeError from warm-up and ONNX Runtime's multi-line InvalidArgument (a graph fixed at
    one image whose metadata promises 8) each fail their own version only: one line each in
    /health/ready, an error in the log, 0 in convserve_model_ready; the initial load ends."""
    repo = tmp_path / "models"
    write_tiny_model(repo, "good")
    write_zipmap_model(repo, "zipmap")
    write_fixed_batch_model(repo, "fixed-wide", max_batch_size=8)
    settings = Settings(model_repository=repo, default_model="good", providers="cpu")
    with caplog.at_level("ERROR"), threaded_server(settings, ready=False) as url:
        ready = _settled(url)
        ok = httpx.post(url + "/v1/classify", content=random_png(1), headers=PNG)
        metrics = httpx.get(url + "/metrics").text
    body = ready.json()
    assert ready.status_code == 503
    assert body["status"] == "not_ready"
    assert body["models"] == {"good": [1]}
    assert sorted(body["missing"]) == ["fixed-wide", "zipmap"]
    fixed_wide, zipmap = sorted(body["errors"])
    assert zipmap.startswith("zipmap/1: TypeError: float() argument must be")
    assert fixed_wide.startswith("fixed-wide/1: warm-up failed: ")
    assert "INVALID_ARGUMENT" in fixed_wide
    for error in (zipmap, fixed_wide):
        assert "\n" not in error
        assert "  " not in error
        assert any(error in record.getMessage() for record in caplog.records)
        model = error.partition("/")[0]
        assert metric_value(metrics, "convserve_model_ready", model=model, version="1") == 0
        assert f'convserve_model_ready{{model="{model}"' in metrics  # present: alerts fire on it
    assert ok.status_code == 200


def test_the_repository_poll_outlives_a_version_that_fails_to_load(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_tiny_model(repo, "good")
    settings = Settings(
        model_repository=repo, default_model="good", providers="cpu", model_poll_seconds=0.05
    )
    with threaded_server(settings) as url:
        # Written aside and moved in whole, as an exporter does: a poll never sees it half done.
        write_zipmap_model(tmp_path / "staging", "zipmap")
        (tmp_path / "staging" / "zipmap").rename(repo / "zipmap")
        for _ in range(400):  # bounded: 20 s
            errors = httpx.get(url + "/health/ready").json()["errors"]
            if errors:
                break
            time.sleep(0.05)
        assert len(errors) == 1
        assert errors[0].startswith("zipmap/1: TypeError: ")
        # Found by a poll, never loaded: reported, yet the models served keep the server ready.
        ready = httpx.get(url + "/health/ready")
        assert ready.status_code == 200
        assert ready.json()["status"] == "ok"
        assert ready.json()["missing"] == []
        write_tiny_model(tmp_path / "staging", "late")  # the next polls still run: it loads
        (tmp_path / "staging" / "late").rename(repo / "late")
        for _ in range(400):
            models = httpx.get(url + "/health/ready").json()["models"]
            if "late" in models:
                break
            time.sleep(0.05)
        late = httpx.post(url + "/v1/models/late/classify", content=random_png(2), headers=PNG)
    assert models == {"good": [1], "late": [1]}
    assert late.status_code == 200
