"""Hot reload and SIGTERM under traffic: no request fails, nothing accepted is dropped."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.traffic import CLIENTS, Traffic, wait_for
from tests.service.server import ServiceProcess
from tests.service.tiny_model import random_png, write_tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
POLL_S = 0.2


def model_info(base_url: str) -> dict[str, object]:
    info: dict[str, object] = httpx.get(f"{base_url}/v1/models/tiny-cnn").json()
    return info


def test_reload_under_traffic_fails_no_request(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_tiny_model(repo, "tiny-cnn", version=1, seed=0)
    image = random_png(1)
    with ServiceProcess(
        tmp_path / "service.log",
        model_repository=repo,
        providers="cpu",
        model_poll_seconds=POLL_S,
    ) as service:
        url = f"{service.base_url}/v1/models/tiny-cnn/classify"
        with Traffic(url, lambda: image) as traffic:
            wait_for(lambda: traffic.answered() > 20, "traffic")
            # New version: staged under a hidden name, then renamed into place.
            write_tiny_model(tmp_path / "staging", "tiny-cnn", version=2, seed=1)
            os.replace(tmp_path / "staging" / "tiny-cnn" / "2", repo / "tiny-cnn" / "2")
            wait_for(lambda: model_info(service.base_url)["versions"] == [1, 2], "v2 loaded")
            wait_for(lambda: traffic.versions[2] > 10, "traffic on v2")
            # Removed version.
            shutil.move(repo / "tiny-cnn" / "1", tmp_path / "removed-1")
            wait_for(lambda: model_info(service.base_url)["versions"] == [2], "v1 removed")
            # Changed version, file by file (each file replaced atomically).
            write_tiny_model(tmp_path / "changed", "tiny-cnn", version=2, seed=5)
            for name in ("model.onnx", "cam_weights.npy", "metadata.json"):
                os.replace(
                    tmp_path / "changed" / "tiny-cnn" / "2" / name, repo / "tiny-cnn" / "2" / name
                )
            wait_for(
                lambda: (
                    model_info(service.base_url)["training"]
                    == {"dataset": "random-weights", "seed": 5}
                ),
                "v2 reloaded",
            )
            answered_before = traffic.answered()
            wait_for(lambda: traffic.answered() > answered_before + 20, "traffic after reload")
        assert traffic.errors == []
        assert set(traffic.codes) == {200}
        assert traffic.versions[1] > 0
        assert traffic.versions[2] > 0
        log = service.log()
        assert "closed old session of tiny-cnn version 1" in log
        assert "tiny-cnn version 2 changed: reloaded" in log


def test_sigterm_under_traffic_drops_nothing(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_tiny_model(repo, "tiny-cnn")
    image = random_png(2)

    body_gate = threading.Event()
    body_gate.set()
    held = threading.Semaphore(0)

    def held_body() -> Iterator[bytes]:
        # The request is accepted (headers read) before its body is complete; while the gate is
        # closed, the rest of the body waits for it.
        yield image[:100]
        if not body_gate.is_set():
            held.release()
            body_gate.wait(30)
        yield image[100:]

    with ServiceProcess(
        tmp_path / "service.log", model_repository=repo, providers="cpu"
    ) as service:
        url = f"{service.base_url}/v1/models/tiny-cnn/classify"
        with Traffic(url, held_body) as traffic:
            wait_for(lambda: traffic.answered() >= 2 * CLIENTS, "traffic")
            body_gate.clear()
            assert held.acquire(timeout=30)  # a request is half sent
            traffic.stop.set()  # no new requests: the ones in flight were all sent before
            in_flight = traffic.in_flight
            service.terminate()
            wait_for(lambda: "Shutting down" in service.log(), "shutdown begun")
            body_gate.set()  # the held bodies complete only after shutdown began
        code = service.process.wait(timeout=60)
        assert in_flight > 0
        assert traffic.errors == []
        assert set(traffic.codes) == {200}
        assert code in {0, -15}
        assert "every accepted request answered" in service.log()


def test_a_request_the_drain_time_runs_out_on_is_answered_503(tmp_path: Path) -> None:
    """A body still arriving when CONVSERVE_SHUTDOWN_TIMEOUT_S runs out: uvicorn cancels its
    request, which is answered 503 in the service's JSON (not uvicorn's plain-text 500), and the
    log says that not every request was answered."""
    repo = tmp_path / "models"
    write_tiny_model(repo, "tiny-cnn", color_mode="L", gap_head=True, seed=0)
    with ServiceProcess(
        tmp_path / "service.log", model_repository=repo, providers="cpu", shutdown_timeout_s=1
    ) as service:
        host, port = service.base_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(
                b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                b"Content-Length: 1000\r\n\r\n" + b"\x89PNG\r\n\x1a\n"
            )
            wait_for(lambda: "Application startup complete" in service.log(), "started")
            time.sleep(0.5)  # the request is being read
            service.terminate()
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        code = service.process.wait(timeout=60)
    assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
    assert b'"code":"not_ready"' in answer
    assert code in {0, -15}
    log = service.log()
    assert "1 request(s) still running after 1 s were answered 503" in log
    assert "every accepted request answered" not in log
    assert "Traceback" not in log
