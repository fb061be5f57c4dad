"""docker-compose.yml (+ GPU override): Compose Specification schema and cross-references."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.settings import Settings
from tests.conftest import REPO_ROOT
from tests.deploy.dockerfile import parse_dockerfile

COMPOSE = REPO_ROOT / "docker-compose.yml"
COMPOSE_GPU = REPO_ROOT / "docker-compose.gpu.yml"
PROMETHEUS_CONFIG = REPO_ROOT / "deploy/prometheus/prometheus.yml"
GRAFANA = REPO_ROOT / "deploy/grafana"
# ${VAR:-default} / ${VAR-default} / ${VAR}: what compose substitutes when VAR is unset.
_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


def check_jsonschema() -> str:
    path = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    assert path, "check-jsonschema is missing: it comes with the dev extra; run make setup"
    return path


def validate_compose(*files: Path) -> subprocess.CompletedProcess[str]:
    # The Compose Specification schema as vendored by check-jsonschema (PyPI package data).
    return subprocess.run(
        [check_jsonschema(), "--builtin-schema", "vendor.compose-spec", *map(str, files)],
        capture_output=True,
        text=True,
        check=False,
    )


def load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict)
    return document


def unset_env(value: str) -> str:
    """The value compose uses when none of the variables are set."""
    return _VARIABLE.sub(lambda m: m.group(2) or "", value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load(COMPOSE)


def test_compose_files_match_the_compose_specification() -> None:
    done = validate_compose(COMPOSE, COMPOSE_GPU)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_schema_check_rejects_a_broken_file(tmp_path: Path) -> None:
    broken = load(COMPOSE)
    broken["services"]["convserve"]["prots"] = ["8000:8000"]
    path = tmp_path / "compose.yml"
    path.write_text(yaml.safe_dump(broken))
    done = validate_compose(path)
    assert done.returncode != 0
    assert "prots" in done.stdout + done.stderr


def test_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"convserve", "prometheus", "grafana"}
    build = services["convserve"]["build"]
    stages = {s.name for s in parse_dockerfile(REPO_ROOT / build["context"] / "Dockerfile").stages}
    assert build["target"] in stages
    assert build["args"]["VARIANT"] == "cpu"
    for service in services.values():
        for dependency in service.get("depends_on", {}):
            assert dependency in services


def bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    mounts = []
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith((".", "/")):
            mounts.append(((REPO_ROOT / source).resolve(), target))
    return mounts


def test_mounted_files_exist_and_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for source, _ in bind_mounts(service):
            assert source.exists(), f"{name} mounts {source}, which is not in the repository"
            assert source.is_relative_to(REPO_ROOT)
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in compose["volumes"], f"{name}: volume {source} not declared"


def published_ports(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(host address, host port, container port) with every variable unset."""
    ports = []
    for port in service.get("ports", []):
        host, host_port, container_port = unset_env(port).split(":")
        ports.append((host, host_port, container_port))
    return ports


def test_ports_bind_to_localhost_by_default(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for host, _, _ in published_ports(service):
            assert host == "127.0.0.1", f"{name} publishes on {host!r} by default"
        for port in service.get("ports", []):
            assert "_BIND:-127.0.0.1}" in port, f"{name}: the address must be overridable"


def test_convserve_port_and_prometheus_target_agree(compose: dict[str, Any]) -> None:
    dockerfile = parse_dockerfile(REPO_ROOT / "Dockerfile")
    service_port = dockerfile.stage("service").env()["CONVSERVE_PORT"]
    ((_, _, container_port),) = published_ports(compose["services"]["convserve"])
    assert container_port == service_port
    config = load(PROMETHEUS_CONFIG)
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "convserve"]
    assert job["metrics_path"] == "/metrics"
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert targets == [f"convserve:{service_port}"]


def mount_target(service: dict[str, Any], repo_path: str) -> str:
    for source, target in bind_mounts(service):
        if source == (REPO_ROOT / repo_path).resolve():
            return target
    raise AssertionError(f"{repo_path} is not mounted")


def test_prometheus_loads_the_mounted_config_and_rules(compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    config_path = mount_target(prometheus, "deploy/prometheus/prometheus.yml")
    assert f"--config.file={config_path}" in prometheus["command"]
    rules_dir = mount_target(prometheus, "deploy/prometheus/rules")
    (rule_glob,) = load(PROMETHEUS_CONFIG)["rule_files"]
    assert Path(rule_glob).parent == Path(rules_dir)
    rule_files = list((REPO_ROOT / "deploy/prometheus/rules").glob(Path(rule_glob).name))
    assert rule_files, f"{rule_glob} matches no file in deploy/prometheus/rules"
    ((_, _, port),) = published_ports(prometheus)
    assert f"--web.listen-address=:{port}" in prometheus["command"]


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards(
    compose: dict[str, Any],
) -> None:
    grafana = compose["services"]["grafana"]
    assert mount_target(grafana, "deploy/grafana/provisioning") == "/etc/grafana/provisioning"
    dashboards_dir = mount_target(grafana, "deploy/grafana/dashboards")
    provider = load(GRAFANA / "provisioning/dashboards/convserve.yml")["providers"][0]
    assert provider["options"]["path"] == dashboards_dir
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert Path(home).parent == Path(dashboards_dir)
    assert (GRAFANA / "dashboards" / Path(home).name).is_file()

    (datasource,) = load(GRAFANA / "provisioning/datasources/prometheus.yml")["datasources"]
    ((_, _, prometheus_port),) = published_ports(compose["services"]["prometheus"])
    assert datasource["url"] == f"http://prometheus:{prometheus_port}"


def test_host_ports_can_move(compose: dict[str, Any]) -> None:
    """Each published port is overridable (*_HOST_PORT), e.g. to run beside another stack."""
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert re.fullmatch(r"\$\{[A-Z_]+:-[\d.]+\}:\$\{[A-Z]+_HOST_PORT:-\d+\}:\d+", port), (
                f"{name}: {port}"
            )


def test_prometheus_image_is_upstream_unless_overridden(compose: dict[str, Any]) -> None:
    """PROMETHEUS_IMAGE swaps in Prometheus built from Debian's package (where no registry is
    reachable); that image must run compose's `command` as prom/prometheus does."""
    image = compose["services"]["prometheus"]["image"]
    assert re.fullmatch(r"\$\{PROMETHEUS_IMAGE:-prom/prometheus:v[\d.]+\}", image), image
    debian = parse_dockerfile(REPO_ROOT / "deploy/prometheus/Dockerfile")
    (stage,) = debian.stages
    (entrypoint,) = stage.all("ENTRYPOINT")
    assert json.loads(entrypoint.arguments) == ["/usr/bin/prometheus"]
    (workdir,) = stage.all("WORKDIR")
    data_volume = [v for v in compose["services"]["prometheus"]["volumes"] if "-data:" in v]
    assert [v.split(":")[1] for v in data_volume] == [workdir.arguments]
    (user,) = stage.all("USER")
    assert user.arguments.split(":")[0] != "0"


def grace_period_s(value: str) -> int:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", value)
    assert value, "empty duration"
    assert match, f"unsupported duration {value!r}"
    return int(match.group(1) or 0) * 60 + int(match.group(2) or 0)


def test_stop_grace_period_outlasts_the_drain(compose: dict[str, Any]) -> None:
    """On SIGTERM the service finishes accepted requests for up to CONVSERVE_SHUTDOWN_TIMEOUT_S:
    compose must wait longer before it kills the container."""
    convserve = compose["services"]["convserve"]
    timeout = convserve["environment"].get("CONVSERVE_SHUTDOWN_TIMEOUT_S")
    shutdown_timeout_s = (
        int(unset_env(timeout)) if timeout else Settings.model_fields["shutdown_timeout_s"].default
    )
    assert grace_period_s(convserve["stop_grace_period"]) > shutdown_timeout_s


def test_api_key_comes_from_the_environment(compose: dict[str, Any]) -> None:
    environment = compose["services"]["convserve"]["environment"]
    assert environment["CONVSERVE_API_KEY"] == "${CONVSERVE_API_KEY:-}"


def test_gpu_override_reserves_a_gpu_and_builds_the_gpu_variant() -> None:
    override = load(COMPOSE_GPU)
    assert set(override["services"]) == {"convserve"}
    convserve = override["services"]["convserve"]
    assert convserve["build"]["args"]["VARIANT"] == "gpu"
    (device,) = convserve["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert "gpu" in device["capabilities"]
    assert convserve["image"] != load(COMPOSE)["services"]["convserve"]["image"]
