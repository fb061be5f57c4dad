"""Connections below HTTP (service/connections.py): request-head and body deadlines, the cap on
open connections, and a client holding more half-open connections than the process has file
descriptors."""

from __future__ import annotations

import contextlib
import pickle
import resource
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import pytest

from service.connections import (
    BODY,
    HEAD,
    IDLE,
    MAX_HEAD_BYTES,
    OPAQUE,
    TOO_LARGE,
    ConnectionGuard,
    RequestFraming,
)
from service.settings import FD_HEADROOM, Settings
from tests.service.server import ServiceProcess, threaded_server
from tests.service.tiny_model import random_png

PNG = {"content-type": "image/png"}
PARTIAL_HEAD = b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-a: "
# A request of which 10 of 1,000 body bytes have been sent.
SLOW_BODY = (
    b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
    b"Content-Length: 1000\r\n\r\n0123456789"
)
CLOSE_WAIT_S = 20.0  # bound on waiting for the server to close connections
TRICKLE_BYTES = 100
TRICKLE_INTERVAL_S = 0.2


def _address(base_url: str) -> tuple[str, int]:
    host, port = base_url.removeprefix("http://").split(":")
    return host, int(port)


def _closed_by_server(socks: list[socket.socket], within_s: float) -> list[bool]:
    """Whether the server closes each of `socks` within `within_s` in all (answers are read
    past)."""
    deadline = time.monotonic() + within_s
    closed = []
    for sock in socks:
        try:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            while sock.recv(65536):
                pass
        except ConnectionResetError:
            closed.append(True)
        except TimeoutError:
            closed.append(False)
        else:
            closed.append(True)
    return closed


@contextmanager
def _connections(base_url: str, count: int, first_bytes: bytes) -> Iterator[list[socket.socket]]:
    with ExitStack() as stack:
        socks = []
        for _ in range(count):
            sock = stack.enter_context(socket.create_connection(_address(base_url), timeout=10))
            if first_bytes:
                sock.sendall(first_bytes)
            socks.append(sock)
        yield socks


# --- framing ------------------------------------------------------------------------------
def _fed(*reads: bytes) -> RequestFraming:
    framing = RequestFraming()
    for data in reads:
        framing.feed(data)
    return framing


def test_a_head_split_anywhere_ends_at_its_empty_line() -> None:
    request = b"GET / HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"
    for cut in range(1, len(request)):
        framing = _fed(request[:cut])
        assert (framing.phase, framing.heads) == (HEAD, 0), cut
        framing.feed(request[cut:])
        assert (framing.phase, framing.heads) == (IDLE, 1), cut


def test_bodies_by_length_and_by_chunks_then_the_next_request() -> None:
    posted = b"POST /v1/classify HTTP/1.1\r\nHost: x\r\ncontent-LENGTH: 5\r\n\r\n"
    framing = _fed(posted, b"abc")
    assert (framing.phase, framing.heads) == (BODY, 1)
    framing.feed(b"de" + b"GET /h")  # the body's end, then a pipelined head begins
    assert (framing.phase, framing.heads) == (HEAD, 1)
    chunked = (
        b"ET HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        b"4;ext=1\r\nwxyz\r\nA\r\n0123456789\r\n0\r\nTrailer: t\r\n"
    )
    for byte in range(len(chunked)):  # one byte at a time
        framing.feed(chunked[byte : byte + 1])
    assert (framing.phase, framing.heads) == (BODY, 3)
    framing.feed(b"\r\n")
    assert (framing.phase, framing.heads) == (IDLE, 3)
    framing.feed(b"\r\n")  # an empty line between requests is tolerated (RFC 9112 §2.2)
    assert framing.phase == HEAD
    framing.feed(b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert (framing.phase, framing.heads) == (IDLE, 4)


def test_whole_requests_in_one_read() -> None:
    """The usual case: heads read at once, bodies counted, pipelined requests one after the
    other; bare-LF line ends and a leading empty line are read line by line."""
    one = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
    framing = _fed(one + one + b"GET / HTTP/1.1\r\n\r\n")
    assert (framing.phase, framing.heads) == (IDLE, 3)
    framing.feed(b"\r\nPOST / HTTP/1.1\r\nContent-Length: 4\r\n\r\nab")
    assert (framing.phase, framing.heads) == (BODY, 4)
    framing.feed(b"cd" + b"POST / HTTP/1.1\nContent-Length: 2\n\nx\r\n\r\n")
    assert (framing.phase, framing.heads) == (HEAD, 5)  # "x" and CRLF were its body
    framing.feed(b"GET / HTTP/1.1\r\nX-Content-Length: 9\r\n\r\n")
    assert (framing.phase, framing.heads) == (IDLE, 6)


@pytest.mark.parametrize(
    "header",
    [
        b"Content-Length: -1",
        b"Content-Length: 1e3",
        b"Content-Length: 5\r\nContent-Length: 6",
        b"Transfer-Encoding: gzip",
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip",
    ],
)
def test_framing_it_cannot_read_is_opaque(header: bytes) -> None:
    framing = _fed(b"POST / HTTP/1.1\r\n" + header + b"\r\n\r\n", b"more bytes")
    assert (framing.phase, framing.heads) == (OPAQUE, 1)


def test_a_bad_chunk_size_is_opaque() -> None:
    framing = _fed(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert framing.phase == OPAQUE


def test_one_request_at_a_time() -> None:
    """`one_request` stops just after each request's end, bodies included; the last read part of
    a request is read to the end."""
    posted = b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
    got = b"GET / HTTP/1.1\r\n\r\n"
    data = posted + got + posted[:20]
    framing = RequestFraming()
    stops = [framing.feed(data, 0, one_request=True)]
    while stops[-1] < len(data):
        stops.append(framing.feed(data, stops[-1], one_request=True))
    assert stops == [len(posted), len(posted + got), len(data)]
    assert (framing.phase, framing.heads) == (HEAD, 2)


def test_a_head_past_the_limit_is_too_large_however_it_arrives() -> None:
    line = b"X-Cookie: " + b"c" * 1000 + b"\r\n"
    lines = MAX_HEAD_BYTES // len(line) + 1
    head = b"GET / HTTP/1.1\r\n" + line * lines + b"\r\n"
    whole = RequestFraming()
    assert whole.feed(head) < len(head)
    assert whole.phase == TOO_LARGE
    split = RequestFraming()
    for at in range(0, len(head), 700):
        split.feed(head[at : at + 700])
    assert (split.phase, split.heads) == (TOO_LARGE, 0)
    fits = b"GET / HTTP/1.1\r\n" + line * (lines - 2) + b"\r\n"
    framing = _fed(fits, fits[:50], fits[50:])  # and the limit is per head
    assert (framing.phase, framing.heads) == (IDLE, 2)


def test_the_guard_travels_to_worker_processes() -> None:
    guard = ConnectionGuard(max_connections=7, header_timeout_s=2.5, body_timeout_s=9)
    copy = pickle.loads(pickle.dumps(guard))
    assert (copy.max_connections, copy.header_timeout_s, copy.body_deadline_s) == (7, 2.5, 10)
    assert copy.protocol is guard.protocol


def test_the_default_cap_keeps_descriptors_free() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert Settings(max_connections=5).effective_max_connections == 5
    expected = max(soft - FD_HEADROOM, soft // 2)
    assert Settings().effective_max_connections in {expected, 65_536}


# --- a real server ------------------------------------------------------------------------
def test_connections_without_a_whole_head_are_closed(tiny_repo: Path) -> None:
    """Silent, half a head, and half of a second head after a first request answered on the
    same connection: the server closes all three. A normal client is answered meanwhile."""
    settings = Settings(
        model_repository=tiny_repo, default_model="tiny-cnn", providers="cpu", header_timeout_s=0.5
    )
    with threaded_server(settings) as url, _connections(url, 3, b"") as socks:
        silent, partial, second = socks
        partial.sendall(PARTIAL_HEAD)
        second.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert second.recv(65536).startswith(b"HTTP/1.1 200 ")
        second.sendall(PARTIAL_HEAD)
        good = httpx.get(url + "/health/live")
        closed = _closed_by_server(socks, CLOSE_WAIT_S)
    assert closed == [True, True, True]
    assert good.status_code == 200


def test_a_body_trickling_in_after_the_answer_is_cut_off(tiny_repo: Path) -> None:
    """A route that answers without reading the body (401: no key): the client goes on sending
    it a byte at a time, each of which would restart uvicorn's keep-alive timer. The connection
    is closed at BODY_TIMEOUT_S + 1 s."""
    settings = Settings(
        model_repository=tiny_repo,
        default_model="tiny-cnn",
        providers="cpu",
        api_key="k",
        body_timeout_s=0.5,
    )
    with threaded_server(settings) as url, _connections(url, 1, SLOW_BODY) as (sock,):
        assert sock.recv(65536).startswith(b"HTTP/1.1 401 ")
        sent = 0
        with contextlib.suppress(OSError):  # reset once closed
            for _ in range(TRICKLE_BYTES):  # 100 bytes, 0.2 s apart: 20 s at most
                sock.sendall(b"x")
                sent += 1
                time.sleep(TRICKLE_INTERVAL_S)
        closed = _closed_by_server([sock], CLOSE_WAIT_S)
    assert sent < TRICKLE_BYTES
    assert closed == [True]


def test_at_the_cap_a_connection_waiting_for_its_head_makes_room(tiny_repo: Path) -> None:
    """Cap 8: 8 silent connections give way to new ones, which are answered; 8 connections in
    the middle of their bodies do not, and a new one is refused with 503 until one ends."""
    settings = Settings(
        model_repository=tiny_repo, default_model="tiny-cnn", providers="cpu", max_connections=8
    )
    with threaded_server(settings) as url:
        with _connections(url, 8, b""):
            codes = []
            for seed in range(10):
                with httpx.Client(base_url=url) as client:  # a new connection each
                    answer = client.post("/v1/classify", content=random_png(seed), headers=PNG)
                codes.append(answer.status_code)
            assert codes == [200] * 10
        with _connections(url, 8, SLOW_BODY) as busy:
            refused = httpx.get(url + "/health/live")
            busy.pop().close()
            answered = httpx.get(url + "/health/live")  # may need a retry: the close is async
            for _ in range(50):
                if answered.status_code == 200:
                    break
                answered = httpx.get(url + "/health/live")
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "too_many_connections"
    assert refused.headers["retry-after"] == "1"
    assert answered.status_code == 200


def _rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(x for x in status.splitlines() if x.startswith("VmRSS")).split()[1]) / 1024


def _answers(sock: socket.socket, count: int) -> list[bytes]:
    """The status lines and bodies of `count` answers (each with a Content-Length)."""
    buffer, answers = b"", []
    sock.settimeout(CLOSE_WAIT_S)
    while len(answers) < count:
        end = buffer.find(b"\r\n\r\n")
        if end >= 0:
            head = buffer[:end].lower()
            at = head.index(b"content-length:") + len(b"content-length:")
            length = int(head[at:].split(b"\r\n")[0])
            if len(buffer) >= end + 4 + length:
                answers.append(buffer[: buffer.index(b"\r\n")] + b" " + buffer[end + 4 :][:length])
                buffer = buffer[end + 4 + length :]
                continue
        data = sock.recv(1 << 20)
        if not data:
            break
        buffer += data
    return answers


def test_pipelined_requests_are_answered_in_order_and_held_back(
    tiny_repo: Path, tmp_path: Path
) -> None:
    """Requests pipelined on one connection, GETs and POSTs with bodies, are answered in order;
    a client pipelining 100,000 requests on each of two connections without reading the answers
    is taken a request at a time (uvicorn alone holds every request of each read: ~250 MB per
    such connection), and others are answered meanwhile."""
    png = random_png(3)
    post = (
        b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        b"Content-Length: %d\r\n\r\n" % len(png)
    ) + png
    live = b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    with ServiceProcess(
        tmp_path / "service.log", model_repository=tiny_repo, default_model="tiny-cnn"
    ) as service:
        with socket.create_connection(_address(service.base_url)) as sock:
            sock.sendall((live + post) * 50)
            answers = _answers(sock, 100)
        assert len(answers) == 100
        assert all(a.startswith(b"HTTP/1.1 200 ") for a in answers)
        assert [b"predictions" in a for a in answers] == [False, True] * 50
        pid = service.process.pid
        before = _rss_mib(pid)
        with _connections(service.base_url, 2, b"") as socks:
            for sock in socks:
                sock.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    sent = sock.send(live * 100_000)  # as much as the socket takes: some MB
                    assert sent > 1_000_000
            time.sleep(1)
            probe = httpx.get(service.base_url + "/health/live", timeout=10)
            grown = _rss_mib(pid) - before
        assert probe.status_code == 200
        assert grown < 100, f"the server grew by {grown:.0f} MiB"


def test_a_head_too_large_is_a_431(tiny_repo: Path) -> None:
    settings = Settings(model_repository=tiny_repo, default_model="tiny-cnn", providers="cpu")
    big = b"X-Big: " + b"b" * MAX_HEAD_BYTES + b"\r\n"
    with threaded_server(settings) as url, _connections(url, 1, b"") as (sock,):
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n" + big + b"\r\n")
        (answer,) = _answers(sock, 1)
        assert answer.startswith(b"HTTP/1.1 431 ")
        assert b'"code":"header_too_large"' in answer
        assert _closed_by_server([sock], CLOSE_WAIT_S) == [True]
        fits = httpx.get(url + "/health/live", headers={"x-fits": "f" * (MAX_HEAD_BYTES - 200)})
        assert fits.status_code == 200


def _good_requests(base_url: str, count: int) -> dict[str, list[int | str]]:
    """`count` health and classify requests, one after the other: status codes, or the names of
    the transport errors met."""
    codes: dict[str, list[int | str]] = {"health": [], "classify": []}
    with httpx.Client(base_url=base_url, timeout=10) as client:
        for seed in range(count):
            for kind, codes_of_kind in codes.items():
                try:
                    if kind == "health":
                        answer = client.get("/health/live")
                    else:
                        answer = client.post("/v1/classify", content=random_png(seed), headers=PNG)
                    codes_of_kind.append(answer.status_code)
                except httpx.TransportError as err:
                    codes_of_kind.append(type(err).__name__)
    return codes


HALF_OPEN = 1100
FD_LIMIT = 1024
GOOD_REQUESTS = 20


@pytest.mark.slow
def test_half_open_connections_beyond_the_descriptor_limit_starve_no_one(
    tiny_repo: Path, tmp_path: Path
) -> None:
    """`python -m service` with 1,024 file descriptors at most (a common container default,
    default settings) and a client holding 1,100 connections that each sent half a request
    head: a well-behaved client's health and classify requests are all answered 200, and every
    held connection is closed by the server."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = HALF_OPEN + 256
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"this test needs {needed} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        with ServiceProcess(
            tmp_path / "service.log",
            nofile=FD_LIMIT,
            model_repository=tiny_repo,
            default_model="tiny-cnn",
            providers="cpu",
        ) as service:
            url = service.base_url
            with _connections(url, HALF_OPEN, PARTIAL_HEAD) as held:
                codes = _good_requests(url, GOOD_REQUESTS)
                closed = sum(_closed_by_server(held, CLOSE_WAIT_S))
            log = service.log()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert codes == {"health": [200] * GOOD_REQUESTS, "classify": [200] * GOOD_REQUESTS}
    assert closed == HALF_OPEN
    assert f"at the cap of {FD_LIMIT - FD_HEADROOM} open" in log
