"""Request bodies held at once are bounded (CONVSERVE_MAX_BODY_MEMORY_BYTES, service/api/edge.py):
bytes count as they arrive and until their request is answered, all requests together."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from service.settings import Settings
from tests.service.server import threaded_server
from tests.service.test_api_edge_slots import _address
from tests.service.tiny_model import random_png

PNG = {"content-type": "image/png"}
MAX_BODY = 40_000
BUDGET = 64_000
HELD = 25_000  # sent by each of two stalled senders: 50,000 of the 64,000 held
DECLARED = 26_000  # what each declares: the second still fits beside the first's 25,000
LARGE = random_png(1, size=(100, 70))  # ~21 KB of noise: more than the 14,000 left
SMALL = random_png(2)  # under 3 KB: fits


def _settings(tiny_repo: Path) -> Settings:
    return Settings(
        model_repository=tiny_repo,
        default_model="tiny-cnn",
        providers="cpu",
        max_body_bytes=MAX_BODY,
        max_body_memory_bytes=BUDGET,
    )


@contextmanager
def _stalled_senders(url: str, count: int) -> Iterator[None]:
    """`count` requests that declare DECLARED bytes, send HELD of them and stall."""
    head = (
        "POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        f"Content-Length: {DECLARED}\r\n\r\n"
    ).encode()
    socks = [socket.create_connection(_address(url), timeout=10) for _ in range(count)]
    try:
        for sock in socks:
            sock.sendall(head + b"\0" * HELD)
        yield
    finally:
        for sock in socks:
            sock.close()


def _post(client: httpx.Client, body: bytes) -> httpx.Response:
    return client.post("/v1/classify", content=body, headers=PNG)


def _refused_once_held(client: httpx.Client, body: bytes) -> httpx.Response:
    """The answer to `body` once the stalled senders' bytes have reached the server (they are
    counted as the route reads them, a moment after they were sent)."""
    deadline = time.monotonic() + 10
    while True:
        answer = _post(client, body)
        if answer.status_code != 200 or time.monotonic() > deadline:
            return answer
        time.sleep(0.05)


def test_a_declared_body_that_does_not_fit_is_refused_and_the_bytes_come_back(
    tiny_repo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert len(LARGE) > BUDGET - 2 * HELD
    assert len(SMALL) < BUDGET - 2 * HELD
    with threaded_server(_settings(tiny_repo)) as url, httpx.Client(base_url=url) as client:
        with _stalled_senders(url, 2):
            refused = _refused_once_held(client, LARGE)
            small = _post(client, SMALL)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "queue_full"
        assert "request bodies held" in refused.json()["error"]["message"]
        assert refused.headers["retry-after"] == "1"
        assert small.status_code == 200  # what is left is still used
        # The stalled senders are gone and their bytes released; answered requests release
        # theirs: one after another, more bodies than the limit holds are all answered.
        deadline = time.monotonic() + 10
        while _post(client, LARGE).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        codes = [_post(client, LARGE).status_code for _ in range(2 * BUDGET // len(LARGE) + 1)]
        assert codes == [200] * len(codes)
        assert client.get("/health/ready").status_code == 200
        metrics = client.get("/metrics").text
    # The senders that went away mid-body: counted, not logged as errors.
    assert 'reason="client_disconnected"} 2.0' in metrics
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_chunked_body_is_refused_when_its_bytes_pass_the_limit(tiny_repo: Path) -> None:
    """No Content-Length: counted as it streams; the message that passes the limit is refused."""

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(LARGE), 4096):
            yield LARGE[start : start + 4096]

    with threaded_server(_settings(tiny_repo)) as url, httpx.Client(base_url=url) as client:
        with _stalled_senders(url, 2):
            _refused_once_held(client, LARGE)  # the stalled senders' bytes are counted
            refused = client.post("/v1/classify", content=chunks(), headers=PNG)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "queue_full"
        assert _post(client, SMALL).status_code == 200


def test_the_limit_holds_at_least_one_largest_body() -> None:
    with pytest.raises(ValidationError, match="MAX_BODY_MEMORY_BYTES .* is below"):
        Settings(max_body_bytes=1000, max_body_memory_bytes=999)
