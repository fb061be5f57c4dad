"""Metric names of docs/service.md (Metrics), and PromQL helpers the deploy tests share."""

from __future__ import annotations

import re

HISTOGRAMS = {
    "convserve_request_duration_seconds",
    "convserve_preprocess_duration_seconds",
    "convserve_queue_duration_seconds",
    "convserve_compute_duration_seconds",
    "convserve_batch_size",
    "convserve_top1_confidence",
}
OTHERS = {
    "convserve_requests_total",
    "convserve_queue_depth",
    "convserve_failures_total",
    "convserve_model_ready",
    "convserve_predictions_total",
    "convserve_gpu_utilization_ratio",
    "convserve_gpu_memory_used_bytes",
}
GPU_METRICS = {"convserve_gpu_utilization_ratio", "convserve_gpu_memory_used_bytes"}
_NAME = re.compile(r"\bconvserve_[a-z0-9_]+")


def metric_names(expr: str) -> set[str]:
    """The metric (docs/service.md, Metrics) each `convserve_*` series name in a PromQL expression
    belongs to."""
    names = set()
    for name in _NAME.findall(expr):
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and name.removesuffix(suffix) in HISTOGRAMS:
                name = name.removesuffix(suffix)
        names.add(name)
    return names
