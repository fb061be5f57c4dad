"""Every Prometheus metric of docs/service.md (Metrics), defined once, on a registry per app."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

PREFIX = "convserve_"
# Set for the workers when CONVSERVE_WORKERS > 1 (service/processes.py): prometheus_client then
# keeps every series in files there, and the exposition sums them over the workers.
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
RETIRED = -1  # convserve_model_ready of a version retired by a reload (several workers only)
# 0.25 ms .. 20 s: resolves a ~1 ms LeNet and a ~500 ms ResNet-50 batch on CPU alike.
LATENCY_BUCKETS_S = (
    0.00025,
    0.0005,
    0.001,
    0.002,
    0.004,
    0.008,
    0.016,
    0.032,
    0.064,
    0.128,
    0.256,
    0.5,
    1.0,
    2.0,
    4.0,
    8.0,
    20.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)
# Top-1 probabilities: at least 1/classes, so the low end is coarse; confident predictions
# crowd towards 1, so the high end is fine (a drift shows first as mass leaving 0.95 .. 0.999).
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99, 0.999)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, *, gpu: bool = True) -> None:
        self.registry = registry or CollectorRegistry()
        # prometheus_client chose its value store from this variable when it was imported.
        self.multiprocess = bool(os.environ.get(MULTIPROCESS_ENV))
        r = self.registry
        self.requests = Counter(
            f"{PREFIX}requests_total",
            "HTTP requests answered.",
            ["model", "version", "route", "code"],
            registry=r,
        )
        self.request_duration = Histogram(
            f"{PREFIX}request_duration_seconds",
            "Time from request received to response sent.",
            ["model", "route"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.preprocess_duration = Histogram(
            f"{PREFIX}preprocess_duration_seconds",
            "Decode and preprocessing time per request.",
            ["model"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue_duration = Histogram(
            f"{PREFIX}queue_duration_seconds",
            "Time an image waited in the batcher before compute.",
            ["model"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.compute_duration = Histogram(
            f"{PREFIX}compute_duration_seconds",
            "session.run time per batch.",
            ["model"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_size = Histogram(
            f"{PREFIX}batch_size",
            "Images per session.run call.",
            ["model"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            f"{PREFIX}queue_depth",
            "Images waiting in the batcher.",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",  # several workers: their queues together
        )
        self.failures = Counter(
            f"{PREFIX}failures_total",
            "Requests answered with an error, by reason (error code).",
            ["model", "reason"],
            registry=r,
        )
        self.model_ready = Gauge(
            f"{PREFIX}model_ready",
            "1 while a model version is loaded, warmed and serving; 0 when it failed to load; "
            "-1 when a reload retired it (several workers).",
            ["model", "version", "provider"],
            registry=r,
            multiprocess_mode="livemin",  # several workers: 1 only when every one serves it
        )
        # Labels of `predictions` come from a version's metadata, never from a request: the
        # series are bounded by the models served (`prediction_series`).
        self.predictions = Counter(
            f"{PREFIX}predictions_total",
            "Images classified, by top-1 label.",
            ["model", "version", "label"],
            registry=r,
        )
        self.top1_confidence = Histogram(
            f"{PREFIX}top1_confidence",
            "Softmax probability of the top-1 label per image classified.",
            ["model", "version"],
            buckets=CONFIDENCE_BUCKETS,
            registry=r,
        )
        # Children looked up once per label set (`_series`): `labels()` validates, converts and
        # locks on every call (tens of microseconds per request on a cold cache). Never pruned:
        # the label sets of the hot paths are bounded (known models, route templates, codes).
        self._children: dict[tuple[MetricWrapperBase, tuple[str, ...]], Any] = {}
        self._gpu = NvmlCollector.create() if gpu else None
        if self._gpu is not None:
            r.register(self._gpu)

    def _series(self, metric: MetricWrapperBase, *labels: str) -> Any:
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def observe_request(
        self, model: str, version: str, route: str, code: str, duration_s: float
    ) -> None:
        """One answered HTTP request: requests_total and request_duration_seconds."""
        self._series(self.requests, model, version, route, code).inc()
        self._series(self.request_duration, model, route).observe(duration_s)

    def count_failure(self, model: str, reason: str) -> None:
        """One request answered with an error (`reason`: its error code)."""
        self._series(self.failures, model, reason).inc()

    def observe_preprocess(self, model: str, duration_s: float) -> None:
        self._series(self.preprocess_duration, model).observe(duration_s)

    def set_ready(self, model: str, version: int, provider: str, ready: bool) -> None:
        self.model_ready.labels(model, str(version), provider).set(1 if ready else 0)

    def forget_ready(self, model: str, version: int, provider: str) -> None:
        """Drop a version's `model_ready` series. With several workers prometheus_client cannot
        remove a series, so a series this worker had set shows RETIRED (-1) there instead: not
        the 0 of a failed load, which pages (deploy/prometheus/rules: `== 0`)."""
        labels = (model, str(version), provider)
        if not self.multiprocess:
            with contextlib.suppress(KeyError):
                self.model_ready.remove(*labels)
        elif labels in self._ready_series():
            self.model_ready.labels(*labels).set(RETIRED)

    def prediction_series(self, model: str, version: int, labels: Sequence[str]) -> Predictions:
        """A version's `predictions_total` (every label's, created at 0 so that a label's share
        is 0 rather than absent until it is first predicted) and `top1_confidence` series."""
        v = str(version)
        return Predictions(
            [self.predictions.labels(model, v, label) for label in labels],
            self.top1_confidence.labels(model, v),
        )

    def forget_predictions(
        self, model: str, version: int, labels: Sequence[str], *, confidence: bool = True
    ) -> None:
        """Drop a retired version's `predictions_total` series of `labels` and, with
        `confidence`, its `top1_confidence`. With several workers prometheus_client cannot
        remove a series: they stay at their last values, which rate() reads as 0."""
        if self.multiprocess:
            return
        v = str(version)
        for label in labels:
            with contextlib.suppress(KeyError):
                self.predictions.remove(model, v, label)
        if confidence:
            with contextlib.suppress(KeyError):
                self.top1_confidence.remove(model, v)

    def _ready_series(self) -> set[tuple[str, ...]]:
        return {
            (s.labels["model"], s.labels["version"], s.labels["provider"])
            for family in self.model_ready.collect()
            for s in family.samples
        }

    def exposition(self) -> bytes:
        """The Prometheus text format; with several workers, the series of all of them (summed
        counters and histograms, gauges as their `multiprocess_mode` says)."""
        if not self.multiprocess:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        if self._gpu is not None:
            merged.register(self._gpu)
        return generate_latest(merged)

    def close(self) -> None:
        """At a worker's exit: its live gauges leave the sums (counters and histograms stay)."""
        if self.multiprocess:
            multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


class Predictions:
    """One version's prediction series, looked up once at load: recording an image is one
    counter and one histogram increment, nothing allocated or looked up per request."""

    __slots__ = ("_confidence", "_labels")

    def __init__(self, labels: list[Any], confidence: Any) -> None:
        self._labels = labels  # the `predictions_total` child of each class index
        self._confidence = confidence

    def record(self, index: int, probability: float) -> None:
        """One image whose top-1 class is `index` with softmax probability `probability`."""
        self._labels[index].inc()
        self._confidence.observe(probability)


class NvmlCollector(Collector):
    """GPU utilisation and memory through NVML; only registered when a GPU is present."""

    def __init__(self, nvml: Any, count: int) -> None:
        self._nvml = nvml
        self._count = count

    @classmethod
    def create(cls) -> NvmlCollector | None:
        try:
            import pynvml
        except ImportError:
            return None
        try:
            pynvml.nvmlInit()
            count = int(pynvml.nvmlDeviceGetCount())
        except pynvml.NVMLError as err:
            logger.debug("NVML unavailable, no GPU metrics: %s", err)
            return None
        return cls(pynvml, count) if count > 0 else None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        util = GaugeMetricFamily(
            f"{PREFIX}gpu_utilization_ratio", "GPU busy fraction (NVML).", labels=["gpu"]
        )
        memory = GaugeMetricFamily(
            f"{PREFIX}gpu_memory_used_bytes", "GPU memory in use (NVML).", labels=["gpu"]
        )
        for index in range(self._count):
            handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
            rates = self._nvml.nvmlDeviceGetUtilizationRates(handle)
            info = self._nvml.nvmlDeviceGetMemoryInfo(handle)
            util.add_metric([str(index)], float(rates.gpu) / 100.0)
            memory.add_metric([str(index)], float(info.used))
        yield util
        yield memory
