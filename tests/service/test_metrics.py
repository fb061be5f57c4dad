from __future__ import annotations

from types import SimpleNamespace

from prometheus_client import CollectorRegistry, generate_latest

from service.metrics import LATENCY_BUCKETS_S, Metrics, NvmlCollector


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
