"""The convserve Grafana dashboard as data: its panels and their PromQL."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import REPO_ROOT

GRAFANA = REPO_ROOT / "deploy/grafana"
DASHBOARD = GRAFANA / "dashboards/convserve.json"


def dashboard() -> dict[str, Any]:
    document = json.loads(DASHBOARD.read_text())
    assert isinstance(document, dict)
    return document


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of the dashboard."""
    return [
        (panel["title"], target["expr"])
        for panel in dashboard()["panels"]
        for target in panel["targets"]
    ]
