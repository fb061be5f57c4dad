"""20 hot reloads, and unload/load cycles, of a model while client threads classify with it, on a
real `python -m service` (the reload-by-polling and SIGTERM cases: test_service_lifecycle.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.e2e.traffic import Traffic, wait_for
from tests.service.server import ServiceProcess
from tests.service.tiny_model import random_png, write_tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
RELOADS = 20
UNLOAD_CYCLES = 5
ADMIN_KEY = "reload-admin"
ADMIN = {"X-API-Key": ADMIN_KEY}
MODEL_FILES = ("model.onnx", "cam_weights.npy", "metadata.json")


def _replace_version(repo: Path, staging: Path, seed: int) -> None:
    """New weights for tiny-cnn/1, each file swapped in atomically (as an exporter would)."""
    write_tiny_model(staging / str(seed), "tiny-cnn", version=1, seed=seed)
    for name in MODEL_FILES:
        os.replace(staging / str(seed) / "tiny-cnn" / "1" / name, repo / "tiny-cnn" / "1" / name)


@contextmanager
def service_and_admin(repo: Path, log: Path) -> Iterator[tuple[ServiceProcess, httpx.Client]]:
    """`python -m service` on `repo` with the admin routes on, and a client for them."""
    with (
        ServiceProcess(log, model_repository=repo, providers="cpu", admin_key=ADMIN_KEY) as service,
        httpx.Client(base_url=service.base_url, timeout=60) as admin,
    ):
        yield service, admin


def test_twenty_reloads_under_traffic_fail_no_request(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_tiny_model(repo, "tiny-cnn", version=1, seed=0)
    image = random_png(3)
    with service_and_admin(repo, tmp_path / "service.log") as (service, admin):
        url = f"{service.base_url}/v1/models/tiny-cnn/classify"
        with Traffic(url, lambda: image) as traffic:
            wait_for(lambda: traffic.answered() > 20, "traffic")
            for seed in range(1, RELOADS + 1):
                _replace_version(repo, tmp_path / "staging", seed)
                answered = traffic.answered()
                response = admin.post("/v2/repository/models/tiny-cnn/load", headers=ADMIN)
                assert response.status_code == 200, response.text
                training = admin.get("/v1/models/tiny-cnn").json()["training"]
                assert training == {"dataset": "random-weights", "seed": seed}
                wait_for(lambda a=answered: traffic.answered() > a + 5, "traffic after reload")
        log = service.log()
    assert traffic.errors == []
    assert set(traffic.codes) == {200}
    assert log.count("tiny-cnn version 1 changed: reloaded") == RELOADS
    print(f"\n{RELOADS} reloads under traffic: {traffic.codes[200]} x 200, 0 failed")  # noqa: T201


def test_unload_and_load_under_traffic_lose_no_accepted_request(tmp_path: Path) -> None:
    """While unloaded, new requests get 404 model_not_found by design; accepted ones finish."""
    repo = tmp_path / "models"
    write_tiny_model(repo, "tiny-cnn")
    image = random_png(4)
    with service_and_admin(repo, tmp_path / "service.log") as (service, admin):
        url = f"{service.base_url}/v1/models/tiny-cnn/classify"
        with Traffic(url, lambda: image) as traffic:
            for _ in range(UNLOAD_CYCLES):
                answered = traffic.answered()
                wait_for(lambda a=answered: traffic.answered() > a + 10, "traffic")
                unload = admin.post("/v2/repository/models/tiny-cnn/unload", headers=ADMIN)
                assert unload.status_code == 200, unload.text
                load = admin.post("/v2/repository/models/tiny-cnn/load", headers=ADMIN)
                assert load.status_code == 200, load.text
    assert set(traffic.codes) <= {200, 404}
    assert traffic.codes[200] > 0
    assert all("model_not_found" in error for error in traffic.errors), traffic.errors[:3]
    print(f"\nunload/load x{UNLOAD_CYCLES} under traffic: {dict(traffic.codes)}")  # noqa: T201
