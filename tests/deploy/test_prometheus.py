"""Prometheus config and alert rules, checked and unit-tested by the real promtool."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT, require_executable
from tests.deploy.metrics import HISTOGRAMS, OTHERS, metric_names

PROMETHEUS = REPO_ROOT / "deploy/prometheus"
RULES = PROMETHEUS / "rules/convserve.yml"
# convserve_test.yml; drift_test.yml (the input-drift alerts, evaluated once a minute).
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*_test.yml"))
REQUIRED_ALERTS = {
    "ConvserveHighP99Latency",
    "ConvserveHigh5xxRatio",
    "ConvserveQueueSaturated",
    "ConvserveModelNotReady",
    "ConvserveConfidenceDrop",
    "ConvserveLabelMixShift",
}


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_executable("promtool", "prometheus")


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)


def load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict)
    return document


def alerts() -> list[dict[str, Any]]:
    return [rule for group in load(RULES)["groups"] for rule in group["rules"] if "alert" in rule]


def test_check_config_with_the_rules_loaded(promtool: str, tmp_path: Path) -> None:
    """The compose mounts rules/ at the config's rule_files folder; here it points at the repo."""
    config = load(PROMETHEUS / "prometheus.yml")
    (rule_glob,) = config["rule_files"]
    config["rule_files"] = [str(RULES.parent / Path(rule_glob).name)]
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump(config))
    done = run(promtool, "check", "config", str(copy))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "7 rules found" in done.stdout + done.stderr
    done = run(promtool, "check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_check_rules(promtool: str) -> None:
    done = run(promtool, "check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr


def test_rule_unit_tests_pass(promtool: str) -> None:
    assert len(RULE_TESTS) == 2
    done = run(promtool, "test", "rules", *map(str, RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    names = {rule["alert"] for rule in alerts()}
    assert names >= REQUIRED_ALERTS
    cases: dict[str, set[bool]] = {name: set() for name in names}
    for test in (t for path in RULE_TESTS for t in load(path)["tests"]):
        for case in test.get("alert_rule_test", []):
            cases[case["alertname"]].add(bool(case["exp_alerts"]))
    for name, kinds in cases.items():
        assert kinds == {True, False}, f"{name}: needs one firing and one non-firing case"


@pytest.mark.parametrize("alert", sorted(REQUIRED_ALERTS | {"ConvserveDown"}))
def test_unit_tests_fail_when_an_alert_never_fires(
    promtool: str, tmp_path: Path, alert: str
) -> None:
    """A mutant rule file whose alert can never fire must fail `promtool test rules`."""
    rules = load(RULES)
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                rule["expr"] = f"({rule['expr']}) and on() vector(0) > 1"
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / RULES.name).write_text(yaml.safe_dump(rules))
    (tmp_path / "tests").mkdir()
    for path in RULE_TESTS:
        (tmp_path / "tests" / path.name).write_text(path.read_text())
    done = run(promtool, "test", "rules", *(str(tmp_path / "tests" / p.name) for p in RULE_TESTS))
    assert done.returncode != 0
    assert alert in done.stdout + done.stderr


def test_rules_use_only_design_metrics() -> None:
    for rule in alerts():
        names = metric_names(rule["expr"])
        assert names <= HISTOGRAMS | OTHERS, f"{rule['alert']}: unknown metric in {names}"
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert {"summary", "description"} <= set(rule["annotations"])
