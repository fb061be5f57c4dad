"""CONVSERVE_WORKERS=2: two real server processes on one port, one /metrics for both, repository
changes refused (they would reach one worker), and a clean SIGTERM."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.service.server import ServiceProcess, metric_value
from tests.service.tiny_model import random_png, write_tiny_model

ADMIN_KEY = "workers-admin-key"
CONNECTIONS = 12
PER_CONNECTION = 5
READY_LINE = re.compile(r"\[(\d+)\] service\.app: ready")


def _classify_many(url: str) -> list[int]:
    image = random_png(2)

    def one_connection(_: int) -> list[int]:
        with httpx.Client(timeout=30) as client:  # its own keep-alive connection
            return [
                client.post(url, content=image, headers={"content-type": "image/png"}).status_code
                for _ in range(PER_CONNECTION)
            ]

    with ThreadPoolExecutor(CONNECTIONS) as pool:
        return [code for codes in pool.map(one_connection, range(CONNECTIONS)) for code in codes]


def test_two_workers_share_the_port_and_the_metrics(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_tiny_model(repo, "tiny-cnn", seed=0)
    with ServiceProcess(
        tmp_path / "service.log",
        model_repository=repo,
        providers="cpu",
        workers=2,
        admin_key=ADMIN_KEY,
    ) as service:
        base = service.base_url
        deadline = time.monotonic() + 60
        while len(set(READY_LINE.findall(service.log()))) < 2:  # both processes loaded
            assert time.monotonic() < deadline, service.log()
            time.sleep(0.05)
        assert httpx.get(f"{base}/health/ready").status_code == 200
        codes = _classify_many(f"{base}/v1/models/tiny-cnn/classify")
        assert codes == [200] * (CONNECTIONS * PER_CONNECTION)

        # Each scrape, on its own connection, may reach either worker: all see every request.
        for _ in range(8):
            text = httpx.get(f"{base}/metrics").text
            served = metric_value(
                text,
                "convserve_requests_total",
                model="tiny-cnn",
                route="/v1/models/{model}/classify",
                code="200",
            )
            assert served == CONNECTIONS * PER_CONNECTION
            assert metric_value(text, "convserve_model_ready", model="tiny-cnn") == 1
            assert metric_value(text, "convserve_batch_size_count", model="tiny-cnn") >= 1

        refused = httpx.post(
            f"{base}/v2/repository/models/tiny-cnn/unload", headers={"X-API-Key": ADMIN_KEY}
        )
        assert refused.status_code == 409
        assert "CONVSERVE_WORKERS" in refused.json()["error"]
        assert httpx.get(f"{base}/v2/models/tiny-cnn/ready").status_code == 200
        service.terminate()
        assert service.process.wait(timeout=30) in (0, -15)

    log = service.log()
    pids = set(READY_LINE.findall(log))
    assert len(pids) == 2, log  # two processes, each loaded the model
    for pid in pids:  # and took connections only then: a loading worker would answer 503
        ready = log.index(f"[{pid}] service.app: ready")
        assert ready < log.index(f"[{pid}] uvicorn.error: Application startup complete"), log
    assert log.count("shut down: every accepted request answered") == 2, log
