"""End to end with the real Prometheus: the service is scraped through deploy/prometheus's
config, the alert rules load and evaluate, and every Grafana dashboard query returns data."""

from __future__ import annotations

import io
import json
import math
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from PIL import Image

from tests.conftest import REPO_ROOT, require_executable, require_system_part
from tests.deploy.dockerfile import parse_dockerfile
from tests.deploy.grafana import dashboard_queries
from tests.deploy.metrics import GPU_METRICS, metric_names

pytestmark = pytest.mark.slow

MODELS = REPO_ROOT / "models"
DEFAULT_MODEL = "lenet5-fashion"
STARTUP_TIMEOUT_S = 60.0
TRAFFIC_S = 6.0
QUERY_TIMEOUT_S = 30.0
# Grafana fills these in; the test uses what a 1 s scrape interval and "all models" give.
DASHBOARD_VARIABLES = {"$__rate_interval": "1m", "$model": ".*"}


@dataclass(frozen=True)
class Endpoints:
    service: str
    prometheus: str


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_ok(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"{process.args!r} exited {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"{url} not OK after {STARTUP_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def scrape_config(service_port: int, prometheus_port: int) -> dict[str, Any]:
    """The repo's prometheus.yml, scraping the loopback service every second."""
    config: dict[str, Any] = yaml.safe_load(
        (REPO_ROOT / "deploy/prometheus/prometheus.yml").read_text()
    )
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    (rule_glob,) = config["rule_files"]
    config["rule_files"] = [str(REPO_ROOT / "deploy/prometheus/rules" / Path(rule_glob).name)]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    jobs["convserve"]["scrape_interval"] = "1s"
    (group,) = jobs["convserve"]["static_configs"]
    assert group["targets"] == ["convserve:8000"]  # what the rewrite below replaces
    group["targets"] = [f"127.0.0.1:{service_port}"]
    jobs["prometheus"]["static_configs"] = [{"targets": [f"127.0.0.1:{prometheus_port}"]}]
    return config


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoints]:
    prometheus_binary = require_executable("prometheus", "prometheus")
    require_system_part(
        (REPO_ROOT / "service/__main__.py").is_file(),
        "the service (python -m service)",
        "service/ has not landed yet",
    )
    require_system_part(
        (MODELS / DEFAULT_MODEL).is_dir(),
        f"the default model models/{DEFAULT_MODEL}",
        "make train-default",
    )
    workdir = tmp_path_factory.mktemp("prometheus-e2e")
    service_port, prometheus_port = free_port(), free_port()
    environment = {
        **os.environ,
        "CONVSERVE_HOST": "127.0.0.1",
        "CONVSERVE_PORT": str(service_port),
        "CONVSERVE_MODEL_REPOSITORY": str(MODELS),
        "CONVSERVE_DEFAULT_MODEL": DEFAULT_MODEL,
    }
    environment.pop("CONVSERVE_API_KEY", None)
    service_log = workdir / "service.log"
    with service_log.open("wb") as log:
        service = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=REPO_ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    config = workdir / "prometheus.yml"
    config.write_text(yaml.safe_dump(scrape_config(service_port, prometheus_port)))
    prometheus_log = workdir / "prometheus.log"
    with prometheus_log.open("wb") as log:
        prometheus = subprocess.Popen(
            [
                prometheus_binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{prometheus_port}",
                "--log.level=warn",
            ],
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        service_url = f"http://127.0.0.1:{service_port}"
        prometheus_url = f"http://127.0.0.1:{prometheus_port}"
        wait_until_ok(f"{service_url}/health/ready", service, service_log)
        wait_until_ok(f"{prometheus_url}/-/ready", prometheus, prometheus_log)
        send_traffic(service_url)
        yield Endpoints(service=service_url, prometheus=prometheus_url)
    finally:
        stop(service)
        stop(prometheus)


def png(seed: int) -> bytes:
    rng = random.Random(seed)
    image = Image.new("L", (28, 28))
    image.putdata([rng.randrange(256) for _ in range(28 * 28)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def send_traffic(service_url: str) -> None:
    """Concurrent valid requests (so batches form) plus undecodable ones (failures)."""
    images = [png(seed) for seed in range(16)]
    url = f"{service_url}/v1/classify"
    codes: list[int] = []

    def client(worker: int) -> None:
        with httpx.Client(timeout=10.0) as http:
            deadline = time.monotonic() + TRAFFIC_S
            sent = 0
            while time.monotonic() < deadline:
                sent += 1
                if worker == 0 and sent % 5 == 0:
                    body, content_type = b"not an image", "image/png"
                else:
                    body, content_type = images[sent % len(images)], "image/png"
                response = http.post(url, content=body, headers={"Content-Type": content_type})
                codes.append(response.status_code)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(client, range(8)))
    assert 200 in codes, f"no request succeeded: {sorted(set(codes))}"
    assert any(400 <= code < 500 for code in codes), "the bad images were not refused"


def query(prometheus_url: str, promql: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": promql}, timeout=10)
    body = response.json()
    assert body["status"] == "success", f"{promql}: {body}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def query_until_data(prometheus_url: str, promql: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + QUERY_TIMEOUT_S
    while True:
        result = query(prometheus_url, promql)
        if result or time.monotonic() > deadline:
            return result
        time.sleep(1.0)


def values(result: list[dict[str, Any]]) -> list[float]:
    return [float(sample["value"][1]) for sample in result]


def test_convserve_target_is_up(endpoints: Endpoints) -> None:
    response = httpx.get(f"{endpoints.prometheus}/api/v1/targets", timeout=10)
    targets = response.json()["data"]["activeTargets"]
    (target,) = [t for t in targets if t["labels"]["job"] == "convserve"]
    assert target["health"] == "up", target
    assert values(query(endpoints.prometheus, 'up{job="convserve"}')) == [1.0]


def test_request_rate_and_latency_quantile(endpoints: Endpoints) -> None:
    rates = values(query_until_data(endpoints.prometheus, "rate(convserve_requests_total[1m])"))
    assert rates, "rate(convserve_requests_total[1m]) returned nothing"
    assert max(rates) > 0
    p99 = values(
        query_until_data(
            endpoints.prometheus,
            "histogram_quantile(0.99, sum by (le) "
            "(rate(convserve_request_duration_seconds_bucket[1m])))",
        )
    )
    assert len(p99) == 1
    assert math.isfinite(p99[0])
    assert 0 < p99[0] < 10


def test_alert_rules_load_and_evaluate(endpoints: Endpoints) -> None:
    deadline = time.monotonic() + QUERY_TIMEOUT_S
    while True:
        response = httpx.get(f"{endpoints.prometheus}/api/v1/rules", timeout=10)
        rules = [r for g in response.json()["data"]["groups"] for r in g["rules"]]
        evaluated = all(r.get("lastEvaluation", "").startswith("20") for r in rules)
        if (rules and evaluated) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert len(rules) == 7
    for rule in rules:
        assert rule["health"] == "ok", rule
    # The service is healthy and lightly loaded: nothing may fire.
    firing = [r["name"] for r in rules if r["state"] == "firing"]
    assert firing == []


def service_has_gpu_metrics(service_url: str) -> bool:
    exposition = httpx.get(f"{service_url}/metrics", timeout=10).text
    return any(line.startswith(tuple(GPU_METRICS)) for line in exposition.splitlines())


def adapter_queries() -> list[str]:
    values = yaml.safe_load((REPO_ROOT / "deploy/prometheus/adapter-values.yaml").read_text())
    queries = []
    for rule in values["rules"]["custom"]:
        series = rule["seriesQuery"].split("{")[0]
        # What prometheus-adapter fills in, with this test's labels instead of namespace/pod.
        query = rule["metricsQuery"].replace("<<.Series>>", series)
        query = query.replace("<<.LabelMatchers>>", 'job="convserve"')
        queries.append(query.replace("<<.GroupBy>>", "instance"))
    return queries


@pytest.mark.parametrize("promql", adapter_queries())
def test_autoscaling_adapter_query_returns_data(endpoints: Endpoints, promql: str) -> None:
    result = query_until_data(endpoints.prometheus, promql)
    assert [sample["metric"] for sample in result] == [
        {"instance": endpoints.service.removeprefix("http://")}
    ]
    assert all(math.isfinite(v) for v in values(result))


@pytest.mark.parametrize(("panel", "expr"), dashboard_queries())
def test_dashboard_query_returns_data(endpoints: Endpoints, panel: str, expr: str) -> None:
    promql = expr
    for variable, value in DASHBOARD_VARIABLES.items():
        promql = promql.replace(variable, value)
    assert "$" not in promql, f"{panel}: unhandled dashboard variable in {expr}"
    if metric_names(expr) <= GPU_METRICS and not service_has_gpu_metrics(endpoints.service):
        # No GPU here: the service does not export the NVML gauges, so the panel is empty.
        # The query must still be valid PromQL.
        assert query(endpoints.prometheus, promql) == [], f"{panel}: data without a GPU?"
        return
    result = query_until_data(endpoints.prometheus, promql)
    assert result, f"{panel}: {promql} returned no data"
    finite = [v for v in values(result) if math.isfinite(v)]
    assert finite, f"{panel}: {promql} returned only NaN: {json.dumps(result)[:500]}"


def test_dockerfile_healthcheck_probes_the_running_service(endpoints: Endpoints) -> None:
    """The image's HEALTHCHECK command passes against a live service and fails without one."""
    (healthcheck,) = parse_dockerfile(REPO_ROOT / "Dockerfile").stage("service").all("HEALTHCHECK")
    command: list[str] = json.loads(healthcheck.arguments.split(" CMD ", 1)[1])
    assert command[0] == "python"
    command[0] = sys.executable
    port = endpoints.service.rsplit(":", 1)[1]
    for probed_port, healthy in ((port, True), (str(free_port()), False)):
        done = subprocess.run(
            command,
            env={**os.environ, "CONVSERVE_PORT": probed_port},
            capture_output=True,
            timeout=10,
            check=False,
        )
        assert (done.returncode == 0) == healthy, done.stderr
