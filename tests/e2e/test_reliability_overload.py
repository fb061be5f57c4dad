"""Overload and deadlines on a real `python -m service`: a burst of requests several times the
in-flight limit, or the queue, is shed with 503s (Retry-After) before decoding, while every
accepted request succeeds."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.e2e.burst import burst
from tests.service.server import ServiceProcess, metric_value
from tests.service.tiny_model import random_png, write_tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
PNG = {"content-type": "image/png"}
URL = "/v1/models/slow-cnn/classify"
MAX_QUEUE = 8
BURST = 4 * MAX_QUEUE
# Shed cheaply means refused before any decoding or queueing: counted, not timed (latencies on 2
# shared cores measure the client and the neighbours as much as the server). Every refusal is a
# queue_full failure, and only accepted requests are decoded.
ROUTE = "/v1/models/{model}/classify"
# A real model heavy enough to be the bottleneck (about 0.6 G multiply-adds per image): a burst
# sent at once arrives far faster than the in-flight requests are answered.
SLOW_SIZE, SLOW_CONV1, SLOW_CONV2 = 128, 64, 256


def slow_service(tmp_path: Path, **settings: object) -> ServiceProcess:
    """`python -m service` serving slow-cnn on one single-threaded CPU instance."""
    repo = tmp_path / "models"
    write_tiny_model(repo, "slow-cnn", size=SLOW_SIZE, conv1=SLOW_CONV1, conv2=SLOW_CONV2)
    return ServiceProcess(
        tmp_path / "service.log",
        model_repository=repo,
        providers="cpu",
        instances=1,
        intra_op_threads=1,
        **settings,
    )


@pytest.mark.parametrize(
    "max_inflight",
    # The edge's in-flight limit sheds (every admitted request fits the queue); or the queue
    # sheds, images still being decoded holding their places in it.
    [MAX_QUEUE, 2 * BURST],
    ids=["in-flight-limit", "queue"],
)
def test_a_burst_is_shed_before_decoding(tmp_path: Path, max_inflight: int) -> None:
    image = random_png(1)
    with slow_service(
        tmp_path,
        max_batch_size=4,
        max_queue_size=MAX_QUEUE,
        max_inflight_requests=max_inflight,
        max_queue_delay_ms=0,
        max_batch_compute_ms=0,  # batches of 4 whatever the measured compute: the sum above
    ) as service:
        results = burst(service.base_url, URL, image, BURST)
        metrics = httpx.get(service.base_url + "/metrics").text
    decoded = metric_value(metrics, "convserve_preprocess_duration_seconds_count", model="slow-cnn")
    codes = [code for code, _ in results]
    rejected = [retry for code, retry in results if code == 503]
    assert set(codes) <= {200, 503}, codes
    assert 0 < codes.count(200) < BURST
    assert set(rejected) == {"1"}
    assert metric_value(metrics, "convserve_failures_total", reason="queue_full") == len(rejected)
    print(f"\nburst of {BURST}: {codes.count(200)} x 200, {len(rejected)} x 503")  # noqa: T201
    served = metric_value(metrics, "convserve_requests_total", model="slow-cnn", route=ROUTE)
    assert served >= len(results)  # refusals at the edge counted under their model and route
    # Refused before decoding: every answered request but the refusals was decoded, no more.
    assert decoded == served - len(rejected)


def test_deadline_default_and_header(tmp_path: Path) -> None:
    """The default deadline and X-Request-Timeout-Ms: queued work past its deadline is 504 and
    never computed (the compute histogram counts only the requests answered 200)."""
    image = random_png(2)
    with slow_service(tmp_path, max_batch_size=1, request_timeout_ms=1) as service:

        async def burst(headers: dict[str, str]) -> list[int]:
            async with httpx.AsyncClient(base_url=service.base_url, timeout=60) as client:
                answers = await asyncio.gather(
                    *(
                        client.post(URL, content=image, headers={**PNG, **headers})
                        for _ in range(16)
                    )
                )
            return [a.status_code for a in answers]

        default = asyncio.run(burst({}))
        generous = asyncio.run(burst({"X-Request-Timeout-Ms": "60000"}))
        metrics = httpx.get(service.base_url + "/metrics").text
    # Past its deadline in the queue: 504; refused up front because the queue ahead would
    # outlast the deadline: 503. Either way it is never computed.
    assert set(default) <= {200, 503, 504}
    assert {503, 504} & set(default)
    assert generous == [200] * 16
    computed = sum(
        float(line.rpartition(" ")[2])
        for line in metrics.splitlines()
        if line.startswith("convserve_batch_size_sum")
    )
    assert computed == default.count(200) + 16
