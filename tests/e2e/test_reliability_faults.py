"""Runtime faults on a real `python -m service`: injected with CONVSERVE_FAULT_INJECTION (an ONNX
Runtime crash or hang cannot be caused on demand), answered for that batch only, counted, and
recovered from by recreating the session, without a restart."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.service.server import ServiceProcess, metric_value, wait_ready
from tests.service.tiny_model import random_png, write_tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
RECOVERY_LIMIT_S = 10.0
PNG = {"content-type": "image/png"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_tiny_model(root, "tiny-cnn")
    return root


def _classify(client: httpx.Client, seed: int = 1) -> httpx.Response:
    return client.post("/v1/models/tiny-cnn/classify", content=random_png(seed), headers=PNG)


def _recover(
    service: ServiceProcess, client: httpx.Client
) -> tuple[float, list[httpx.Response], str]:
    """Seconds until ready again, then 10 classify answers and the metrics text."""
    started = time.monotonic()
    wait_ready(service.base_url, timeout_s=RECOVERY_LIMIT_S)
    recovered_s = time.monotonic() - started
    after = [_classify(client, seed) for seed in range(10)]
    return recovered_s, after, client.get("/metrics").text


@contextmanager
def faulty_service(
    repo: Path, tmp_path: Path, **settings: object
) -> Iterator[tuple[ServiceProcess, httpx.Client]]:
    with (
        ServiceProcess(
            tmp_path / "service.log", model_repository=repo, providers="cpu", **settings
        ) as service,
        httpx.Client(base_url=service.base_url, timeout=30) as client,
    ):
        yield service, client


def test_raising_runtime_fails_its_batches_then_recovers(repo: Path, tmp_path: Path) -> None:
    with faulty_service(repo, tmp_path, fault_injection="raise:3") as (service, client):
        failed = [_classify(client) for _ in range(3)]
        recovered_s, after, metrics = _recover(service, client)
        log = service.log()
    for response in failed:
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.json()["error"]["code"] == "runtime_error"
        assert "injected runtime fault" in response.json()["error"]["message"]
    assert [r.status_code for r in after] == [200] * 10
    assert metric_value(metrics, "convserve_failures_total", reason="runtime_error") == 3
    assert metric_value(metrics, "convserve_failures_total", reason="internal") == 0
    assert log.count("recreated, back in service") == 3
    print(f"\nraise:3 -> 3 x 503 runtime_error, ready again after {recovered_s:.2f} s")  # noqa: T201


def test_hung_runtime_times_out_others_succeed_and_it_recovers(repo: Path, tmp_path: Path) -> None:
    with faulty_service(
        repo,
        tmp_path,
        instances=2,
        batch_timeout_s=0.5,
        fault_injection="stall:1",  # hangs 1.5 s: past the watchdog, then ends by itself
    ) as (service, client):
        with ThreadPoolExecutor(1) as pool:
            stalled = pool.submit(_classify, client)
            time.sleep(0.1)  # the stalled batch holds one instance; the other one serves
            during = [_classify(client, seed) for seed in range(10)]
            hung = stalled.result()
        recovered_s, after, metrics = _recover(service, client)
        code = service.stop(timeout_s=20)
    assert hung.status_code == 504
    assert hung.json()["error"]["code"] == "runtime_timeout"
    assert [r.status_code for r in during] == [200] * 10
    assert [r.status_code for r in after] == [200] * 10
    assert metric_value(metrics, "convserve_failures_total", reason="runtime_timeout") == 1
    assert code in {0, -15}  # exited on SIGTERM: the abandoned thread does not hold the exit
    print(f"\nstall:1 -> 504 runtime_timeout, ready after {recovered_s:.2f} s")  # noqa: T201


def test_sigterm_exits_within_the_grace_period_despite_a_hung_session(
    repo: Path, tmp_path: Path
) -> None:
    """Watchdog off, a batch hangs for 30 s: SIGTERM still ends the process after about
    CONVSERVE_SHUTDOWN_TIMEOUT_S, the hung request being the one answer that is lost."""
    with faulty_service(
        repo, tmp_path, batch_timeout_s=0, shutdown_timeout_s=2, fault_injection="stall:1"
    ) as (service, client):
        with ThreadPoolExecutor(1) as pool:
            hung = pool.submit(_classify, client)
            time.sleep(0.3)
            service.terminate()
            # Ends before the hung batch does (its stall is 30 s): a process that waited for
            # it would still be running here.
            code = service.process.wait(timeout=20)
            with contextlib.suppress(httpx.HTTPError):
                hung.result()
        log = service.log()
    assert code in {0, -15}
    assert "shut down after 2 s with batches still running" in log
