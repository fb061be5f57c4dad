"""Grafana provisioning and the convserve dashboard (its queries run in test_prometheus_e2e)."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.deploy.grafana import DASHBOARD, GRAFANA, dashboard
from tests.deploy.metrics import GPU_METRICS, HISTOGRAMS, OTHERS, metric_names

REQUIRED_PANELS = {
    "Request rate by code": {"convserve_requests_total"},
    "Request latency p50 / p95 / p99": {"convserve_request_duration_seconds"},
    "Queue vs compute time (mean per batch item)": {
        "convserve_queue_duration_seconds",
        "convserve_compute_duration_seconds",
    },
    "Batch size distribution": {"convserve_batch_size"},
    "Queue depth": {"convserve_queue_depth"},
    "Failures by reason": {"convserve_failures_total"},
    "GPU utilisation": {"convserve_gpu_utilization_ratio"},
    "GPU memory used": {"convserve_gpu_memory_used_bytes"},
    "Top-1 confidence: mean, p10, p50": {"convserve_top1_confidence"},
    "Label mix (share of top-1 predictions)": {"convserve_predictions_total"},
}


def datasource_uid() -> str:
    path = GRAFANA / "provisioning/datasources/prometheus.yml"
    (datasource,) = yaml.safe_load(path.read_text())["datasources"]
    assert datasource["type"] == "prometheus"
    return str(datasource["uid"])


def test_required_panels_query_their_metrics() -> None:
    panels = {panel["title"]: panel for panel in dashboard()["panels"]}
    for title, metrics in REQUIRED_PANELS.items():
        assert title in panels, f"missing panel {title!r}"
        used = set().union(*(metric_names(t["expr"]) for t in panels[title]["targets"]))
        assert metrics <= used, f"{title}: queries {used}, expected {metrics}"
    latency = [t["expr"] for t in panels["Request latency p50 / p95 / p99"]["targets"]]
    assert [q.split(",")[0] for q in latency] == [
        f"histogram_quantile({q}" for q in ("0.5", "0.95", "0.99")
    ]


def test_every_query_uses_the_provisioned_datasource_and_design_metrics() -> None:
    uid = datasource_uid()
    for panel in dashboard()["panels"]:
        assert panel["datasource"]["uid"] == uid, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, panel["title"]
            names = metric_names(target["expr"])
            assert names, f"{panel['title']}: {target['expr']} reads no convserve metric"
            assert names <= HISTOGRAMS | OTHERS, f"{panel['title']}: unknown {names}"
            # Model panels follow the $model selector; GPU gauges have only a gpu label.
            if not names <= GPU_METRICS:
                assert 'model=~"$model"' in target["expr"], panel["title"]


def test_layout_and_identity() -> None:
    document = dashboard()
    assert document["uid"] == "convserve"
    ids = [panel["id"] for panel in document["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in document["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
    (variable,) = document["templating"]["list"]
    assert variable["name"] == "model"
    assert variable["datasource"]["uid"] == datasource_uid()


def test_dashboard_provider_loads_this_folder() -> None:
    path = GRAFANA / "provisioning/dashboards/convserve.yml"
    (provider,) = yaml.safe_load(path.read_text())["providers"]
    assert provider["type"] == "file"
    assert Path(provider["options"]["path"]).name == DASHBOARD.parent.name
