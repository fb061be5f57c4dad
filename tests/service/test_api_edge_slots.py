"""In-flight slots (service/api/edge.py) are taken when a request's body has arrived: senders
trickling their bodies in cannot hold them."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from service.settings import Settings
from tests.service.server import threaded_server
from tests.service.tiny_model import random_png

PNG = {"content-type": "image/png"}
DECLARED_BYTES = 100_000
SENT = b"\x89PNG\r\n\x1a\n\x00\x00"  # 10 of the declared bytes, then silence
NORMAL_REQUESTS = 20


def _address(base_url: str) -> tuple[str, int]:
    host, port = base_url.removeprefix("http://").split(":")
    return host, int(port)


def _answered(sock: socket.socket) -> bool:
    """Whether the server has answered or closed `sock` (without waiting)."""
    sock.setblocking(False)
    try:
        sock.recv(1, socket.MSG_PEEK)
    except BlockingIOError:
        return False
    finally:
        sock.setblocking(True)
    return True


def test_slow_senders_hold_no_inflight_slot(tiny_repo: Path) -> None:
    """As many senders as there are in-flight slots (256 by default), each declaring 100,000
    bytes and sending 10: every normal classify request meanwhile is answered 200, not 503."""
    settings = Settings(model_repository=tiny_repo, default_model="tiny-cnn", providers="cpu")
    head = (
        "POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        f"Content-Length: {DECLARED_BYTES}\r\n\r\n"
    ).encode()
    slow: list[socket.socket] = []
    with threaded_server(settings) as url:
        try:
            for _ in range(settings.max_inflight_requests):
                sock = socket.create_connection(_address(url), timeout=10)
                slow.append(sock)
                sock.sendall(head + SENT)
            with httpx.Client(base_url=url, timeout=30) as client:
                codes = [
                    client.post("/v1/classify", content=random_png(i), headers=PNG).status_code
                    for i in range(NORMAL_REQUESTS)
                ]
            still_waiting = sum(not _answered(sock) for sock in slow)
        finally:
            for sock in slow:
                sock.close()
    assert codes == [200] * NORMAL_REQUESTS
    assert still_waiting == len(slow)  # the slow senders were held, not turned away


def test_requests_whose_body_arrived_are_still_limited(tiny_repo: Path) -> None:
    """One slot: a request computing (stalled by fault injection until the 5 s watchdog answers
    504) holds it, and another, whose body has arrived, is answered 503 queue_full."""
    settings = Settings(
        model_repository=tiny_repo,
        default_model="tiny-cnn",
        providers="cpu",
        max_inflight_requests=1,
        fault_injection="stall:1",
        batch_timeout_s=5,
    )
    with threaded_server(settings) as url, ThreadPoolExecutor(2) as pool:
        answers = list(
            pool.map(
                lambda seed: httpx.post(
                    url + "/v1/classify", content=random_png(seed), headers=PNG, timeout=60
                ),
                range(2),
            )
        )
    codes = sorted(answer.status_code for answer in answers)
    assert codes == [503, 504]
    refused = next(answer for answer in answers if answer.status_code == 503)
    assert refused.json()["error"]["code"] == "queue_full"
    assert refused.headers["retry-after"] == "1"
