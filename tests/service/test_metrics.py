from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

from prometheus_client import CollectorRegistry, generate_latest

from service.metrics import LATENCY_BUCKETS_S, MULTIPROCESS_ENV, RETIRED, Metrics, NvmlCollector
from tests.conftest import REPO_ROOT


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
