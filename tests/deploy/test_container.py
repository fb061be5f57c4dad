"""The images for real, with podman: the CPU service image built from the Dockerfile (build
arguments only) on a base image made from Debian packages, run read-only as non-root and
compared with the native service; then the compose stack, scraped by Prometheus."""

from __future__ import annotations

import base64
import json
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import pytest
import yaml

from service.settings import Settings
from tests.conftest import REPO_ROOT, require_system_part
from tests.deploy import podman
from tests.service.server import metric_value, threaded_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

# The name docker-compose.yml gives the CPU image, so compose runs the image built here.
SERVICE_IMAGE = "localhost/convserve:cpu"
PROMETHEUS_IMAGE = "localhost/prometheus-debian:bookworm"
# The CPU image without the CUDA provider libraries (deploy/README.md, "Container images").
MAX_CPU_IMAGE_BYTES = 450_000_000
APP_UID = "10001"
DEFAULT_MODEL = "lenet5-fashion"
SAMPLES = REPO_ROOT / "service/static/samples"
READY_TIMEOUT_S = 60.0
SCRAPE_TIMEOUT_S = 60.0
# A SIGTERM'd container exits with the service's re-raised SIGTERM (128 + 15); 137 would mean
# the engine gave up waiting and killed it.
EXIT_AFTER_SIGTERM = 143
STOP_TIME_S = 30


@dataclass(frozen=True)
class Running:
    name: str
    url: str


def sample_png() -> bytes:
    samples = sorted(SAMPLES.glob("fashion-*.png"))
    assert samples, f"no fashion-*.png sample in {SAMPLES}"
    return samples[0].read_bytes()


def wait_ok(url: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=2)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:300]}"
        except httpx.TransportError as err:
            last = repr(err)
        time.sleep(0.1)
    pytest.fail(f"{url} not OK after {timeout_s} s: {last}", pytrace=False)


def classify(base_url: str, image: bytes, **params: str) -> dict[str, Any]:
    response = httpx.post(
        f"{base_url}/v1/classify",
        content=image,
        headers={"Content-Type": "image/png"},
        params=params,
        timeout=30,
    )
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


@pytest.fixture(scope="module")
def base_image() -> str:
    podman.require_podman()
    return podman.ensure_base_image()


@pytest.fixture(scope="module")
def service_image(base_image: str) -> str:
    require_system_part(
        (REPO_ROOT / "models" / DEFAULT_MODEL / "1").is_dir(),
        f"the default model models/{DEFAULT_MODEL}/1",
        "make train-default",
    )
    return build_cpu_service(SERVICE_IMAGE, REPO_ROOT, base_image)


def build_cpu_service(tag: str, context: Path, base_image: str) -> str:
    """The CPU service image from `context` on `base_image`."""
    return podman.build(
        tag,
        context,
        "--target",
        "service",
        "--build-arg",
        "VARIANT=cpu",
        "--build-arg",
        f"PYTHON_IMAGE={base_image}",
    )


def root_layers(image: str) -> list[str]:
    """The image's layer digests, base first."""
    template = "{{json .RootFS.Layers}}"
    layers: list[str] = json.loads(
        podman.run(["podman", "image", "inspect", "--format", template, image]).stdout
    )
    return layers


@pytest.fixture(scope="module")
def service(service_image: str) -> Iterator[Running]:
    port = podman.free_port()
    name = f"convserve-test-{port}"
    options = ["--read-only", "--tmpfs", "/tmp", "--init", "-p", f"127.0.0.1:{port}:8000"]
    with podman.container(service_image, name, *options):
        url = f"http://127.0.0.1:{port}"
        wait_ok(f"{url}/health/ready")
        yield Running(name=name, url=url)


@pytest.fixture(scope="module")
def native() -> Iterator[str]:
    """The same model served natively (uvicorn in this process), for comparison."""
    settings = Settings(
        model_repository=REPO_ROOT / "models", default_model=DEFAULT_MODEL, providers="cpu"
    )
    with threaded_server(settings) as url:
        yield url


def test_cpu_image_is_small_and_consistent(service_image: str) -> None:
    size = podman.image_size_bytes(service_image)
    assert size <= MAX_CPU_IMAGE_BYTES, f"{service_image} is {size / 1e6:.0f} MB"
    done = podman.run(["podman", "run", "--rm", service_image, "python", "-m", "pip", "check"])
    assert "No broken requirements" in done.stdout


def test_runs_read_only_as_non_root(service: Running) -> None:
    assert podman.inspect(service.name, "{{.HostConfig.ReadonlyRootfs}}") == "true"
    uid = podman.run(["podman", "exec", service.name, "id", "-u"]).stdout.strip()
    assert uid == APP_UID
    denied = podman.run(["podman", "exec", service.name, "touch", "/opt/venv/probe"], check=False)
    assert denied.returncode != 0
    assert "Read-only file system" in denied.stderr
    podman.run(["podman", "exec", service.name, "touch", "/tmp/probe"])


def test_classify_matches_the_native_service(service: Running, native: str) -> None:
    image = sample_png()
    answer = classify(service.url, image, top_k="10")
    expected = classify(native, image, top_k="10")
    assert (answer["model"], answer["version"]) == (expected["model"], expected["version"])
    (predictions,) = [result["predictions"] for result in answer["results"]]
    (expected_predictions,) = [result["predictions"] for result in expected["results"]]
    assert [(p["label"], p["index"]) for p in predictions] == [
        (p["label"], p["index"]) for p in expected_predictions
    ]
    assert [p["probability"] for p in predictions] == pytest.approx(
        [p["probability"] for p in expected_predictions], rel=1e-6, abs=1e-9
    )


def decoded(feature_map: dict[str, Any]) -> npt.NDArray[Any]:
    raw = np.frombuffer(base64.b64decode(feature_map["data"]), dtype="<f2")
    return raw.reshape(feature_map["data_shape"])


def test_feature_maps_match_the_native_service(service: Running, native: str) -> None:
    image = sample_png()
    params = {"feature_maps": "all", "map_format": "float16", "channels": "4"}
    (result,) = classify(service.url, image, **params)["results"]
    (expected,) = classify(native, image, **params)["results"]
    maps, expected_maps = result["feature_maps"], expected["feature_maps"]
    assert maps, "the default model exports feature maps"
    assert [(m["layer"], m["shape"], m["channels"]) for m in maps] == [
        (m["layer"], m["shape"], m["channels"]) for m in expected_maps
    ]
    for got, want in zip(maps, expected_maps, strict=True):
        np.testing.assert_allclose(decoded(got), decoded(want), rtol=1e-3, atol=1e-3)


def test_metrics(service: Running) -> None:
    classify(service.url, sample_png())
    text = httpx.get(f"{service.url}/metrics", timeout=10).text
    assert metric_value(text, "convserve_requests_total", route="/v1/classify", code="200") >= 1
    assert metric_value(text, "convserve_model_ready", model=DEFAULT_MODEL) == 1


def test_healthcheck_passes_and_can_fail(service: Running, service_image: str) -> None:
    # podman schedules healthchecks with systemd timers; `healthcheck run` runs one now.
    podman.run(["podman", "healthcheck", "run", service.name])
    command = podman.healthcheck_command(service_image)
    assert any("/health/live" in word for word in command)
    # The same probe against a port nothing listens on must fail.
    wrong_port = ["podman", "exec", "--env", "CONVSERVE_PORT=1", service.name, *command]
    assert podman.run(wrong_port, check=False).returncode != 0


class SlowRequest:
    """A classify request whose body stops halfway until released: accepted, in flight."""

    def __init__(self, url: str, image: bytes) -> None:
        self.image = image
        self.url = url
        self.body_started = threading.Event()
        self.release = threading.Event()
        self.response: httpx.Response | None = None
        self.error: httpx.HTTPError | None = None
        self.thread = threading.Thread(target=self._post)
        self.thread.start()
        assert self.body_started.wait(timeout=10), "the request did not start"

    def _body(self) -> Iterator[bytes]:
        half = len(self.image) // 2
        yield self.image[:half]
        self.body_started.set()
        self.release.wait(timeout=60)
        yield self.image[half:]

    def _post(self) -> None:
        try:
            self.response = httpx.post(
                self.url, content=self._body(), headers={"Content-Type": "image/png"}, timeout=60
            )
        except httpx.HTTPError as err:
            self.error = err

    def finish(self) -> httpx.Response:
        self.release.set()
        self.thread.join(timeout=60)
        assert self.error is None, repr(self.error)
        assert self.response is not None
        return self.response


def wait_for_log(container: str, text: str, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = podman.run(["podman", "logs", container], check=False)
        if text in done.stdout + done.stderr:
            return
        time.sleep(0.1)
    pytest.fail(f"{container} never logged {text!r}", pytrace=False)


def stop_with_a_request_in_flight(url: str, container: str, stop: threading.Thread) -> None:
    """Sends a slow request, starts `stop`, finishes the request once the service is shutting
    down; the request must be answered and the container exit with the SIGTERM status."""
    request = SlowRequest(f"{url}/v1/classify", sample_png())
    time.sleep(0.5)  # the service reads the request head and starts waiting for the body
    stop.start()
    wait_for_log(container, "Shutting down")
    response = request.finish()
    stop.join(timeout=STOP_TIME_S + 30)
    assert not stop.is_alive()
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["predictions"]
    assert podman.inspect(container, "{{.State.ExitCode}}") == str(EXIT_AFTER_SIGTERM)
    wait_for_log(container, "every accepted request answered")


def test_sigterm_answers_the_request_in_flight(service: Running) -> None:
    """Last test on this container: it stops it."""
    stop = threading.Thread(
        target=podman.run,
        args=(["podman", "stop", "--time", str(STOP_TIME_S), service.name],),
        kwargs={"timeout_s": STOP_TIME_S + 30},
    )
    stop_with_a_request_in_flight(service.url, service.name, stop)
    assert podman.inspect(service.name, "{{.State.Status}}") == "exited"


def prometheus_image(base_image: str) -> str:
    """Built every run: a second or two from cached layers, and never stale."""
    context = REPO_ROOT / "deploy/prometheus"
    return podman.build(PROMETHEUS_IMAGE, context, "--build-arg", f"BASE_IMAGE={base_image}")


def prometheus_query(prometheus_url: str, path: str, **params: str) -> Any:
    response = httpx.get(f"{prometheus_url}/api/v1/{path}", params=params, timeout=10)
    body = response.json()
    assert body["status"] == "success", body
    return body["data"]


def wait_for(what: str, probe: Any, timeout_s: float = SCRAPE_TIMEOUT_S) -> Any:
    """Polls `probe()` until it returns something truthy."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = probe()
        if result:
            return result
        time.sleep(0.5)
    pytest.fail(f"{what}: nothing after {timeout_s} s", pytrace=False)


def stop_grace_s() -> int:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    grace: str = compose["services"]["convserve"]["stop_grace_period"]
    assert grace.endswith("s"), grace
    return int(grace.removesuffix("s"))


def rule_names() -> set[str]:
    names = set()
    for path in (REPO_ROOT / "deploy/prometheus/rules").glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            names |= {rule["alert"] for rule in group["rules"]}
    return names


def test_compose_stack_is_scraped_by_prometheus(base_image: str, service_image: str) -> None:
    """convserve + Prometheus from docker-compose.yml with podman-compose. Grafana is in no
    registry reachable here; its provisioning is checked statically (test_grafana.py)."""
    service_port, prometheus_port = podman.free_port(), podman.free_port()
    env = {
        "PROMETHEUS_IMAGE": prometheus_image(base_image),
        "CONVSERVE_HOST_PORT": str(service_port),
        "PROMETHEUS_HOST_PORT": str(prometheus_port),
        "CONVSERVE_BIND": "127.0.0.1",
        "PROMETHEUS_BIND": "127.0.0.1",
        "CONVSERVE_API_KEY": "",
    }
    service_url = f"http://127.0.0.1:{service_port}"
    prometheus_url = f"http://127.0.0.1:{prometheus_port}"
    with podman.compose_project(f"convserve-test-{service_port}", env) as project:
        # --no-build: compose runs the image built above; nothing is pulled or built here.
        project.compose("up", "-d", "--no-build", "convserve", "prometheus")
        wait_ok(f"{service_url}/health/ready")
        wait_ok(f"{prometheus_url}/-/ready")
        for _ in range(3):
            classify(service_url, sample_png())

        def convserve_target() -> list[dict[str, Any]]:
            targets = prometheus_query(prometheus_url, "targets")["activeTargets"]
            return [t for t in targets if t["labels"]["job"] == "convserve" and t["health"] == "up"]

        (target,) = wait_for("convserve target up", convserve_target)
        assert target["labels"]["instance"] == "convserve:8000"

        def requests_scraped() -> list[dict[str, Any]]:
            query = 'convserve_requests_total{job="convserve",route="/v1/classify",code="200"}'
            result: list[dict[str, Any]] = prometheus_query(prometheus_url, "query", query=query)[
                "result"
            ]
            return [r for r in result if float(r["value"][1]) >= 3]

        wait_for("convserve_requests_total scraped", requests_scraped)
        groups = prometheus_query(prometheus_url, "rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        assert {rule["name"] for rule in rules} == rule_names()

        # stop_grace_period reaches podman-compose's `podman stop -t`, and the drain fits in it.
        output: list[str] = []
        stop = threading.Thread(
            target=lambda: output.append(
                project.compose("stop", "convserve", timeout_s=stop_grace_s() + 30)
            )
        )
        stop_with_a_request_in_flight(service_url, f"{project.name}_convserve_1", stop)
        assert f"stop -t {stop_grace_s()} {project.name}_convserve_1" in output[0]
    assert project.leftovers == [], "podman-compose down left these behind"
    assert podman.port_is_free(service_port)
    assert podman.port_is_free(prometheus_port)


def test_a_code_change_rebuilds_only_the_package_layer(
    service_image: str, base_image: str, tmp_path: Path
) -> None:
    """The dependencies' venv (hundreds of MB) is a layer of its own, copied from a stage that
    service/ does not reach: an image built after a code change shares it (only the package's
    layer, about 1 MB, and the ones above it differ)."""
    context = tmp_path / "context"
    shutil.copytree(
        REPO_ROOT,
        context,
        ignore=shutil.ignore_patterns(".venv", ".git", "runs", "test-artifacts", "__pycache__"),
    )
    with (context / "service" / "__init__.py").open("a") as module:
        module.write("# changed\n")
    changed = build_cpu_service(f"{SERVICE_IMAGE}-changed", context, base_image)
    try:
        first, second = root_layers(service_image), root_layers(changed)
        assert len(first) == len(second)
        venv = len(root_layers(base_image)) + 1  # above the base image and the user's layer
        assert first[venv] == second[venv]
        assert first[venv + 1] != second[venv + 1]  # the package's
    finally:
        podman.run(["podman", "rmi", "-f", changed], check=False)
