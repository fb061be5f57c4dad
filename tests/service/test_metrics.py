from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.manager import ModelManager
from service.metrics import (
    CONFIDENCE_BUCKETS,
    LATENCY_BUCKETS_S,
    MULTIPROCESS_ENV,
    RETIRED,
    Metrics,
    NvmlCollector,
)
from service.settings import Settings
from tests.conftest import REPO_ROOT
from tests.service.server import ServiceProcess, threaded_server
from tests.service.tiny_model import LABELS, write_tiny_model


class FakeNvml:
    """NVML's four calls the collector makes; there is no GPU on the test hosts."""

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:  # noqa: N802 - NVML's names
        return index

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(gpu=40 + handle)

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:  # noqa: N802
        return SimpleNamespace(used=1024 * (handle + 1))


def test_gpu_gauges_per_device() -> None:
    registry = CollectorRegistry()
    registry.register(NvmlCollector(FakeNvml(), count=2))
    text = generate_latest(registry).decode()
    assert 'convserve_gpu_utilization_ratio{gpu="0"} 0.4' in text
    assert 'convserve_gpu_utilization_ratio{gpu="1"} 0.41' in text
    assert 'convserve_gpu_memory_used_bytes{gpu="1"} 2048.0' in text


def test_latency_buckets_resolve_lenet_and_resnet50() -> None:
    assert sum(1 for b in LATENCY_BUCKETS_S if 0.0005 <= b <= 0.002) >= 3  # ~1 ms
    assert sum(1 for b in LATENCY_BUCKETS_S if 0.25 <= b <= 1.0) >= 3  # ~500 ms


def test_registries_are_per_app() -> None:
    first, second = Metrics(gpu=False), Metrics(gpu=False)  # no duplicate-name error
    first.failures.labels("m", "queue_full").inc()
    assert b"queue_full" not in generate_latest(second.registry)


RETIRE_SCRIPT = """
from service.metrics import Metrics
metrics = Metrics()
metrics.set_ready("m", 1, "CPUExecutionProvider", ready=True)
metrics.set_ready("m", 2, "CPUExecutionProvider", ready=True)
metrics.forget_ready("m", 1, "CPUExecutionProvider")
print(metrics.exposition().decode())
"""


def test_a_retired_version_does_not_read_as_a_failed_one_with_workers(tmp_path: Path) -> None:
    """With several workers a series cannot be removed: a version retired by a reload reads -1
    in the merged exposition, not the 0 that the ModelNotReady alert pages on. (A fresh
    interpreter: prometheus_client picks its multiprocess values at import.)"""
    env = {**os.environ, MULTIPROCESS_ENV: str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", RETIRE_SCRIPT],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    series = 'convserve_model_ready{model="m",provider="CPUExecutionProvider",version="%d"}'
    assert f"{series % 1} {float(RETIRED)}" in result.stdout
    assert f"{series % 2} 1.0" in result.stdout


# --- prediction metrics: predictions_total and top1_confidence ---------------------------------

LENET = "lenet5-fashion"
MODELS = REPO_ROOT / "models"
SAMPLES = REPO_ROOT / "service/static/samples"
PNG = {"content-type": "image/png"}


def fashion_samples() -> list[tuple[str, bytes]]:
    """(true label, PNG) of the Fashion-MNIST images bundled with the web page."""
    listed = json.loads((SAMPLES / "samples.json").read_text())["samples"]
    return [
        (s["label"], (SAMPLES / s["file"]).read_bytes())
        for s in listed
        if s["dataset"] == "fashion-mnist"
    ]


def lenet_labels() -> list[str]:
    labels: list[str] = json.loads((MODELS / LENET / "1/metadata.json").read_text())["labels"]
    return labels


def samples_of(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample of `name` in an exposition, keyed by its sorted labels."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def prediction_counts(text: str, model: str = LENET, version: str = "1") -> dict[str, float]:
    return {
        dict(key)["label"]: value
        for key, value in samples_of(text, "convserve_predictions_total").items()
        if dict(key)["model"] == model and dict(key)["version"] == version
    }


def confidence(text: str, model: str = LENET, version: str = "1") -> dict[str, float]:
    """The top1_confidence histogram of one version: `count`, `sum` and each bucket's `le`."""
    values = {}
    for suffix in ("_count", "_sum", "_bucket"):
        for key, value in samples_of(text, f"convserve_top1_confidence{suffix}").items():
            labels = dict(key)
            if labels["model"] == model and labels["version"] == version:
                values[labels.get("le", suffix.removeprefix("_"))] = value
    return values


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


def expected_histogram(probabilities: list[float]) -> dict[str, float]:
    expected = {"count": float(len(probabilities)), "sum": sum(probabilities)}
    for bound in (*CONFIDENCE_BUCKETS, math.inf):
        le = "+Inf" if bound == math.inf else str(float(bound))
        expected[le] = float(sum(1 for p in probabilities if p <= bound))
    return expected


def softmax_top1(logits: list[float]) -> tuple[int, float]:
    values = np.asarray(logits, dtype=np.float64)
    exp = np.exp(values - values.max())
    return int(np.argmax(values)), float(exp.max() / exp.sum())


@pytest.fixture(scope="module")
def lenet_server() -> Iterator[str]:
    settings = Settings(model_repository=MODELS, models=LENET, default_model=LENET, providers="cpu")
    with threaded_server(settings) as url:
        yield url


def test_metadata_labels_are_counted_from_zero(lenet_server: str) -> None:
    """Every label of the model has its series before it is first predicted (a label's share
    is then 0 in PromQL, not absent), and no other label does."""
    text = httpx.get(f"{lenet_server}/metrics").text
    assert set(prediction_counts(text)) == set(lenet_labels())
    assert "+Inf" in confidence(text)


def test_native_classify_counts_each_images_top1_label_and_confidence(lenet_server: str) -> None:
    samples = fashion_samples()
    assert len(samples) >= 8
    before = httpx.get(f"{lenet_server}/metrics").text
    tops: list[tuple[str, float]] = []
    with httpx.Client(base_url=lenet_server, timeout=30) as client:
        for _, image in samples:  # one image per request, top-5
            response = client.post(f"/v1/models/{LENET}/classify", content=image, headers=PNG)
            assert response.status_code == 200, response.text
            top = response.json()["results"][0]["predictions"][0]
            tops.append((top["label"], top["probability"]))
        files = [("file", (f"{i}.png", image, "image/png")) for i, (_, image) in enumerate(samples)]
        several = client.post("/v1/classify", params={"top_k": 1}, files=files[:3])
        assert several.status_code == 200, several.text
        for result in several.json()["results"]:  # one request, three images: three counted
            (top,) = result["predictions"]
            tops.append((top["label"], top["probability"]))
        refused = client.post("/v1/classify", content=b"not a png", headers=PNG)
        assert refused.status_code == 400  # nothing classified: nothing counted
        after = client.get("/metrics").text
    # The trained model gets (nearly) all of its own test images right: a real label mix.
    right = sum(label == top for (label, _), (top, _) in zip(samples, tops, strict=False))
    assert right >= len(samples) - 1
    expected = dict.fromkeys(lenet_labels(), 0.0)
    for label, _ in tops:
        expected[label] += 1
    assert delta(prediction_counts(after), prediction_counts(before)) == expected
    histogram = delta(confidence(after), confidence(before))
    wanted = expected_histogram([p for _, p in tops])
    assert histogram.pop("sum") == pytest.approx(wanted.pop("sum"), rel=1e-9)
    assert histogram == wanted


def v2_body(images: list[bytes], outputs: list[dict[str, Any]] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [len(images)],
                "data": [base64.b64encode(i).decode("ascii") for i in images],
            }
        ]
    }
    if outputs is not None:
        body["outputs"] = outputs
    return body


def test_v2_counts_requests_that_ask_for_a_classification(lenet_server: str) -> None:
    """`classification` on the logits: the server ranks the classes and counts the top-1 of
    each image. Raw logits or feature maps alone: the server makes no prediction, counts none."""
    images = [image for _, image in fashion_samples()]
    infer = f"/v2/models/{LENET}/infer"
    with httpx.Client(base_url=lenet_server, timeout=30) as client:
        before = client.get("/metrics").text
        plain = client.post(infer, json=v2_body(images, None))
        assert plain.status_code == 200, plain.text
        maps = client.post(infer, json=v2_body(images[:2], [{"name": "fm.features.conv1"}]))
        assert maps.status_code == 200, maps.text
        between = client.get("/metrics").text
        assert prediction_counts(between) == prediction_counts(before)
        assert confidence(between) == confidence(before)
        ranked = client.post(
            infer,
            json=v2_body(images, [{"name": "logits", "parameters": {"classification": 2}}]),
        )
        assert ranked.status_code == 200, ranked.text
        after = client.get("/metrics").text
    (logits,) = plain.json()["outputs"]
    rows = np.asarray(logits["data"]).reshape(logits["shape"]).tolist()
    tops = [softmax_top1(row) for row in rows]
    (classes,) = ranked.json()["outputs"]
    firsts = classes["data"][:: classes["shape"][1]]  # "score:index:label", best first
    labels = lenet_labels()
    assert [int(s.split(":")[1]) for s in firsts] == [index for index, _ in tops]
    expected = dict.fromkeys(labels, 0.0)
    for index, _ in tops:
        expected[labels[index]] += 1
    assert delta(prediction_counts(after), prediction_counts(between)) == expected
    histogram = delta(confidence(after), confidence(between))
    wanted = expected_histogram([p for _, p in tops])
    assert histogram.pop("sum") == pytest.approx(wanted.pop("sum"), rel=1e-6)  # float32 logits
    assert histogram == wanted


@pytest.mark.slow
def test_two_workers_count_every_prediction_once(tmp_path: Path) -> None:
    """CONVSERVE_WORKERS=2: each worker counts what it classified; any worker's /metrics sums
    them (connections of their own, so both workers take requests)."""
    samples = fashion_samples()
    with ServiceProcess(
        tmp_path / "service.log",
        model_repository=MODELS,
        models=LENET,
        default_model=LENET,
        providers="cpu",
        workers=2,
    ) as service:

        def classify(image: bytes) -> str:
            with httpx.Client(base_url=service.base_url, timeout=30) as client:
                response = client.post("/v1/classify", content=image, headers=PNG)
                assert response.status_code == 200, response.text
                label: str = response.json()["results"][0]["predictions"][0]["label"]
                return label

        with ThreadPoolExecutor(4) as pool:
            tops = list(pool.map(classify, [image for _, image in samples * 3]))
        expected = dict.fromkeys(lenet_labels(), 0.0)
        for label in tops:
            expected[label] += 1
        for _ in range(6):  # each scrape may reach either worker
            text = httpx.get(f"{service.base_url}/metrics").text
            assert prediction_counts(text) == expected
            assert confidence(text)["count"] == len(tops)
        pids = set(re.findall(r"\[(\d+)\] service\.app: ready", service.log()))
        assert len(pids) == 2, service.log()


@pytest.mark.anyio
async def test_a_retired_version_takes_its_prediction_series_along(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A version changed in place keeps counting in the same series; a version gone from the
    repository leaves /metrics once its last request is done."""
    repo = tmp_path / "models"
    tiny = write_tiny_model(repo, "tiny-cnn", seed=0)
    caplog.set_level(logging.INFO, logger="service.manager")
    metrics = Metrics(gpu=False)
    manager = ModelManager(Settings(model_repository=repo, providers="cpu"), metrics)
    await manager.sync()
    first = manager.get("tiny-cnn")
    first.predictions.record(1, 0.75)
    text = metrics.exposition().decode()
    assert prediction_counts(text, "tiny-cnn") == {**dict.fromkeys(LABELS, 0.0), LABELS[1]: 1.0}

    write_tiny_model(repo, "tiny-cnn", seed=1)  # new weights, same version: reloaded
    async with manager.lease("tiny-cnn") as leased:  # an in-flight request on the old one
        assert leased is first
        await manager.sync()
        changed = manager.get("tiny-cnn")
        assert changed is not first
    changed.predictions.record(1, 0.5)
    await wait_for(lambda: "closed old session of tiny-cnn version 1" in caplog.text)
    text = metrics.exposition().decode()
    assert prediction_counts(text, "tiny-cnn")[LABELS[1]] == 2.0
    assert confidence(text, "tiny-cnn")["count"] == 2.0

    shutil.rmtree(tiny.path)
    await manager.sync()
    await manager.sync()  # two scans without it: retired
    assert manager.versions("tiny-cnn") == []
    await wait_for(lambda: not prediction_counts(metrics.exposition().decode(), "tiny-cnn"))
    assert confidence(metrics.exposition().decode(), "tiny-cnn") == {}
    await manager.close()


async def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


FORGET_SCRIPT = """
from service.metrics import Metrics
metrics = Metrics()
metrics.prediction_series("m", 1, ["cat", "dog"]).record(1, 0.9)
metrics.forget_predictions("m", 1, ["cat", "dog"])
print(metrics.exposition().decode())
"""


def test_a_retired_versions_predictions_stay_flat_with_workers(tmp_path: Path) -> None:
    """Several workers: the series cannot be removed; they keep their last values (read by
    rate() as 0), and the merged exposition still parses."""
    env = {**os.environ, MULTIPROCESS_ENV: str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", FORGET_SCRIPT],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert prediction_counts(result.stdout, "m") == {"cat": 0.0, "dog": 1.0}
    assert confidence(result.stdout, "m")["count"] == 1.0
    assert confidence(result.stdout, "m")["0.95"] == 1.0
