"""Connections, below HTTP: a deadline for every request head and body, a cap on open ones.

uvicorn (0.54) has neither. Its keep-alive timer runs only once a response is complete, and any
byte received cancels it; `limit_concurrency` answers 503 only to a complete request head. So a
client that sent nothing, or part of a request head, held its connection, and a file descriptor,
for ever: 1,100 of them under a 1,024-descriptor limit left the process unable to accept anyone,
health probes included (docs/security.md).

`ConnectionGuard` is what uvicorn calls to make each connection's protocol (`uvicorn.Config`'s
`http`): it wraps the HTTP protocol uvicorn would choose itself (`http="auto"`), passes every
asyncio Protocol call on to it, and reads the bytes received only to find where each request's
head and body end (`RequestFraming`). Only the asyncio Protocol and Transport interfaces are
used; nothing of uvicorn's protocol but its constructor, called with uvicorn's own arguments.

- A request head must be complete within `header_timeout_s` of its first byte (of the
  connection's opening, for the first request), or the connection is closed. Between requests
  uvicorn's keep-alive timeout (5 s) closes idle connections.
- A request body must have arrived within `body_timeout_s` + 1 s of its head, or the connection
  is closed. Routes that read the body answer 408 at `body_timeout_s` (service/api/edge.py);
  this closes the connections of routes that answered without reading it, whose body would
  otherwise trickle in for ever.
- At most `max_connections` are open. A new connection beyond them closes the open one that has
  waited longest for its request head: those do no work yet, and a client's own head arrives
  within a round trip (nginx likewise reuses connections that wait). When none waits, the new
  one is answered 503 `too_many_connections` and closed.
- A request head may take at most `MAX_HEAD_BYTES`: a longer one is answered 431 and its
  connection closed (uvicorn's default parser keeps a head of any size in memory).
- Pipelined requests reach uvicorn one at a time: once its protocol pauses reading (it does for
  a request that arrives while the one before is still answered), the rest of what was received
  waits here, and the socket is not read, until it resumes. uvicorn would otherwise take every
  request of a read at once, a few KiB of state each: a client pipelining 100,000 tiny requests
  on each of four connections held about 1 GB.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from uvicorn.config import HTTP_PROTOCOLS
from uvicorn.importer import import_from_string

from service.metadata import ascii_int
from service.settings import Settings

logger = logging.getLogger(__name__)

# Extra time a body gets before its connection is closed: the app's own 408, due at
# body_timeout_s, goes out first.
BODY_GRACE_S = 1.0
# Warnings about closed and refused connections: at most one line per interval.
REPORT_INTERVAL_S = 10.0
# Bytes of one line kept while looking for its end (the framing headers' names and values).
MAX_LINE_BYTES = 8192
# The longest request head (request line and headers, as sent), as large as a head of many big
# cookies or tokens gets; nginx's default is 8 KiB per line, four lines of them.
MAX_HEAD_BYTES = 65536

IDLE, HEAD, BODY, OPAQUE, TOO_LARGE = "idle", "head", "body", "opaque", "too_large"
# Where a chunked body is (RFC 9112 §7.1).
CHUNK_SIZE, CHUNK_DATA, CHUNK_END, TRAILERS = "size", "data", "end", "trailers"

_REFUSAL_BODY = (
    b'{"error":{"code":"too_many_connections","message":"the server has as many connections '
    b'open as it allows: retry later"}}'
)


def _closing_answer(status: bytes, body: bytes, extra: bytes = b"") -> bytes:
    """A whole JSON answer that closes its connection, written below HTTP."""
    head = (
        b"HTTP/1.1 " + status + b"\r\n"
        b"content-type: application/json\r\n"
        b"content-length: %d\r\n" % len(body) + extra + b"connection: close\r\n"
        b"x-content-type-options: nosniff\r\n"
        b"x-frame-options: DENY\r\n"
        b"\r\n"
    )
    return head + body


REFUSAL = _closing_answer(b"503 Service Unavailable", _REFUSAL_BODY, b"retry-after: 1\r\n")
HEAD_TOO_LARGE = _closing_answer(
    b"431 Request Header Fields Too Large",
    b'{"error":{"code":"header_too_large","message":"the request head (request line and '
    b'headers) is longer than %d bytes"}}' % MAX_HEAD_BYTES,
)


class RequestFraming:
    """Where each request's head and body end in one connection's bytes (RFC 9112): a head
    ends at its empty line; its body is then `Content-Length` bytes, or chunks up to the last
    one and its trailers, or nothing. `phase` is IDLE (between requests), HEAD, BODY, or
    OPAQUE once a head's framing cannot be read (the HTTP parser behind refuses such heads),
    TOO_LARGE once a head passes MAX_HEAD_BYTES; `heads` counts the heads completed."""

    __slots__ = (
        "_bad",
        "_chunk",
        "_chunked",
        "_ended",
        "_head_bytes",
        "_length",
        "_line",
        "_remaining",
        "_started",
        "heads",
        "phase",
    )

    def __init__(self) -> None:
        self.phase = HEAD
        self.heads = 0
        self._line = b""  # the line so far, when it spans several reads (at most MAX_LINE_BYTES)
        self._started = False  # the head's request line seen
        self._length: int | None = None
        self._chunked = False
        self._bad = False
        self._remaining = 0  # body bytes left: the whole body's, or the chunk's
        self._chunk = CHUNK_SIZE
        self._head_bytes = 0  # of the head so far
        self._ended = False  # a request ended in this `feed`

    def feed(self, data: bytes, start: int = 0, *, one_request: bool = False) -> int:
        """Read `data` from `start`; returns where reading stopped: the end, or with
        `one_request` just after the first request that ends in it."""
        position, end = start, len(data)
        self._ended = False
        while position < end and self.phase not in (OPAQUE, TOO_LARGE):
            if self.phase == IDLE:
                if one_request and self._ended:
                    return position
                self.phase = HEAD
            if self.phase == BODY and (self._length is not None or self._chunk == CHUNK_DATA):
                taken = min(self._remaining, end - position)
                self._remaining -= taken
                position += taken
                if not self._remaining:
                    if self._chunked:
                        self._chunk = CHUNK_END
                    else:
                        self._end_body()
                continue
            if self.phase == HEAD and not self._line and not self._started:
                head_end = data.find(b"\r\n\r\n", position, position + MAX_HEAD_BYTES)
                if head_end >= 0 and self._whole_head(data[position : head_end + 2]):
                    position = head_end + 4
                    continue
            newline = data.find(b"\n", position)
            if self.phase == HEAD:
                self._head_bytes += (end if newline < 0 else newline + 1) - position
                if self._head_bytes > MAX_HEAD_BYTES:
                    self.phase = TOO_LARGE
                    return position
            if newline < 0:
                self._line = (self._line + data[position:])[:MAX_LINE_BYTES]
                return end
            line = data[position:newline]
            if self._line:
                line = (self._line + line)[:MAX_LINE_BYTES]
                self._line = b""
            position = newline + 1
            line = line.removesuffix(b"\r")
            if self.phase == HEAD:
                self._head_line(line)
            else:
                self._chunk_line(line)
        return position if self.phase == TOO_LARGE else end

    def _whole_head(self, head: bytes) -> bool:
        """The usual case, a whole head in one read (`head`: up to the CRLF of its last line),
        read at once; False, and nothing read, for anything unusual (an empty line before or
        inside it, as bare LF line ends allow; Transfer-Encoding; several Content-Lengths):
        `_head_line` reads those line by line."""
        if head.startswith((b"\r\n", b"\n")) or b"\n\n" in head or b"\n\r\n" in head:
            return False
        lower = head.lower()
        if b"\ntransfer-encoding:" in lower:
            return False
        at = lower.find(b"\ncontent-length:")
        if at >= 0:
            if lower.find(b"\ncontent-length:", at + 1) >= 0:
                return False
            value = head[at + len(b"\ncontent-length:") : head.find(b"\n", at + 1)].strip()
            length = ascii_int(value)
            self._length = -1 if length is None else length
            self._bad = self._length < 0
        self._started = True
        self._end_head()
        return True

    def _head_line(self, line: bytes) -> None:
        if not line:
            if self._started:  # empty lines before a request line are allowed (RFC 9112 §2.2)
                self._end_head()
            return
        if not self._started:
            self._started = True
            return
        name, colon, value = line.partition(b":")
        name = name.lower()
        if name == b"content-length":
            text = value.strip()
            parsed = ascii_int(text) if colon and len(line) < MAX_LINE_BYTES else None
            length = -1 if parsed is None else parsed
            if length < 0 or self._length not in (None, length):
                self._bad = True
            self._length = length
        elif name == b"transfer-encoding":
            # chunked must be the last coding; anything else a request cannot frame a body with
            last = value.rpartition(b",")[2].strip().lower()
            self._chunked = last == b"chunked" and len(line) < MAX_LINE_BYTES
            self._bad = self._bad or not self._chunked

    def _end_head(self) -> None:
        self.heads += 1
        self._started = False
        self._head_bytes = 0
        if self._bad:
            self.phase = OPAQUE
        elif self._chunked:
            self.phase, self._chunk, self._length = BODY, CHUNK_SIZE, None
        elif self._length:
            self.phase, self._remaining = BODY, self._length
        else:
            self._end_body()

    def _chunk_line(self, line: bytes) -> None:
        if self._chunk == CHUNK_SIZE:
            size = line.partition(b";")[0].strip()
            try:
                self._remaining = int(size, 16) if size.isalnum() else -1
            except ValueError:
                self._remaining = -1
            if self._remaining < 0:
                self.phase = OPAQUE
            else:
                self._chunk = CHUNK_DATA if self._remaining else TRAILERS
        elif self._chunk == CHUNK_END:
            if line:
                self.phase = OPAQUE
            self._chunk = CHUNK_SIZE
        elif not line:  # TRAILERS: the empty line ends the request
            self._end_body()

    def _end_body(self) -> None:
        self.phase = IDLE
        self._length = None
        self._chunked = False
        self._ended = True


class InnerTransport:
    """The transport uvicorn's protocol is given: the connection's own, but for pausing and
    resuming reading, which go through the connection (it may hold requests back)."""

    __slots__ = ("_connection", "_transport")

    def __init__(self, connection: GuardedConnection, transport: asyncio.Transport) -> None:
        self._connection = connection
        self._transport = transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._transport.write(data)

    def pause_reading(self) -> None:
        self._connection.inner_reading(False)

    def resume_reading(self) -> None:
        self._connection.inner_reading(True)

    def is_reading(self) -> bool:
        return self._connection.inner_reads and not self._transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class GuardedConnection(asyncio.Protocol):
    """One connection: uvicorn's protocol (`inner`) behind the guard's deadlines."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self.guard = guard
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.framing = RequestFraming()
        self.timer: asyncio.TimerHandle | None = None
        self.admitted = False  # passed to `inner` (a refused connection never is)
        self.counted = False  # one of the guard's open connections
        self.inner_reads = True  # `inner` has not paused reading
        self.held = b""  # received, not yet passed to `inner` (it paused reading)
        self.socket_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's is one, though not an asyncio.Transport subclass).
        transport = self.transport = cast(asyncio.Transport, transport)
        if not self.guard.admit(self):
            transport.write(REFUSAL)
            transport.close()
            return
        self.admitted = self.counted = True
        self.inner.connection_made(cast(asyncio.Transport, InnerTransport(self, transport)))
        self._enter_phase()

    def data_received(self, data: bytes) -> None:
        if not self.admitted:
            return
        if self.held:  # read before the socket was paused
            self.held += data
            return
        self._pass(data)

    def _pass(self, data: bytes) -> None:
        """Pass `data` to `inner` request by request, holding back what follows a request once
        `inner` has paused reading; refuse a head past MAX_HEAD_BYTES."""
        framing = self.framing
        position, end = 0, len(data)
        while position < end:
            phase, heads = framing.phase, framing.heads
            stop = framing.feed(data, position, one_request=True)
            if framing.phase == TOO_LARGE:
                self._refuse_head()
                return
            if framing.phase != phase or framing.heads != heads:  # a new head or body began
                self._enter_phase()
            whole = position == 0 and stop == end  # the usual case: one request, no copy
            self.inner.data_received(data if whole else data[position:stop])
            position = stop
            if self.transport is None or self.transport.is_closing():  # e.g. a 400 from `inner`
                return
            if position < end and not self.inner_reads:
                self.held = data[position:]
                break
        paused = bool(self.held) or not self.inner_reads
        if paused != self.socket_paused:
            self._pause_socket(paused)

    def inner_reading(self, reads: bool) -> None:
        """`inner` paused or resumed reading: held requests go on once it reads again."""
        self.inner_reads = reads
        if reads and self.held:
            asyncio.get_running_loop().call_soon(self._release)
        else:
            self._pause_socket(not reads or bool(self.held))

    def _release(self) -> None:
        if self.held and self.inner_reads and self.transport is not None:
            held, self.held = self.held, b""
            if not self.transport.is_closing():
                self._pass(held)

    def _pause_socket(self, paused: bool) -> None:
        transport = self.transport
        if paused == self.socket_paused or transport is None or transport.is_closing():
            return
        self.socket_paused = paused
        if paused:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _refuse_head(self) -> None:
        """431 and close: nothing of the oversized head reaches `inner`."""
        self.held = b""
        self.guard.forget(self)
        if self.transport is not None:
            self.transport.write(HEAD_TOO_LARGE)
            self.transport.close()
        self.guard.note("header_too_large")

    def eof_received(self) -> bool | None:
        return self.inner.eof_received() if self.admitted else None

    def connection_lost(self, exc: Exception | None) -> None:
        self.held = b""
        self.guard.forget(self)
        if self.admitted:
            self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self.admitted:
            self.inner.pause_writing()

    def resume_writing(self) -> None:
        if self.admitted:
            self.inner.resume_writing()

    def _enter_phase(self) -> None:
        """Arm the deadline of the phase the connection is now in (none between requests)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        guard = self.guard
        phase = self.framing.phase
        guard.waiting.pop(self, None)
        if phase == HEAD:
            guard.waiting[self] = None  # the newest to wait: the last to be closed at the cap
            timeout_s = guard.header_timeout_s
        else:
            timeout_s = None if phase == IDLE else guard.body_deadline_s
        if timeout_s is not None:
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(timeout_s, self._expired, phase)

    def _expired(self, phase: str) -> None:
        self.timer = None
        self.guard.close(self, "header_timeout" if phase == HEAD else "body_timeout")


class ConnectionGuard:
    """The per-process state and limits, and the factory uvicorn calls for each connection
    (`uvicorn.Config(http=guard)`: any callable returning an asyncio Protocol; this one is
    picklable, for uvicorn's worker processes)."""

    def __init__(
        self,
        *,
        max_connections: int,
        header_timeout_s: float,
        body_timeout_s: float,
        protocol: type[asyncio.Protocol] | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s or None
        self.body_deadline_s = body_timeout_s + BODY_GRACE_S if body_timeout_s else None
        # uvicorn's HTTP protocol: the one it would choose itself by default.
        self.protocol: type[asyncio.Protocol] = protocol or import_from_string(
            HTTP_PROTOCOLS["auto"]
        )
        self.open = 0
        # Connections waiting for (the rest of) a request head, the longest waiting first.
        self.waiting: dict[GuardedConnection, None] = {}
        self.closed = dict.fromkeys(
            ("header_timeout", "header_too_large", "body_timeout", "evicted", "refused"), 0
        )
        self._reported_at = float("-inf")
        self._report: asyncio.TimerHandle | None = None

    def __call__(self, **uvicorn_args: Any) -> asyncio.Protocol:
        return GuardedConnection(self, self.protocol(**uvicorn_args))

    def admit(self, connection: GuardedConnection) -> bool:
        """Count a new connection in, closing the longest waiting one at the cap; False when
        the cap is reached and none waits (the new one is then refused)."""
        if self.open >= self.max_connections:
            if not self.waiting:
                self.note("refused")
                return False
            self.close(next(iter(self.waiting)), "evicted")
        self.open += 1
        return True

    def close(self, connection: GuardedConnection, reason: str) -> None:
        """Close `connection` at once (reset: nothing it still had to send is awaited)."""
        self.forget(connection)
        if connection.transport is not None:
            connection.transport.abort()
        self.note(reason)

    def forget(self, connection: GuardedConnection) -> None:
        if connection.timer is not None:
            connection.timer.cancel()
            connection.timer = None
        self.waiting.pop(connection, None)
        if connection.counted:
            connection.counted = False
            self.open -= 1

    def note(self, reason: str) -> None:
        self.closed[reason] += 1
        if self._report is not None:
            return
        loop = asyncio.get_running_loop()
        delay_s = self._reported_at + REPORT_INTERVAL_S - loop.time()
        self._report = loop.call_later(max(0.0, delay_s), self._log)

    def _log(self) -> None:
        self._report = None
        self._reported_at = asyncio.get_running_loop().time()
        counts = self.closed
        crowded = counts["evicted"] or counts["refused"]
        logger.log(
            logging.WARNING if crowded else logging.DEBUG,
            "connections: %d closed waiting for a request head (%.3g s), %d with a head over %d "
            "bytes (431), %d waiting for a body, %d closed at the cap of %d open to make room, "
            "%d refused with 503 (%d open now)",
            counts["header_timeout"],
            self.header_timeout_s or 0,
            counts["header_too_large"],
            MAX_HEAD_BYTES,
            counts["body_timeout"],
            counts["evicted"],
            self.max_connections,
            counts["refused"],
            self.open,
        )
        self.closed = dict.fromkeys(counts, 0)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn options that put every connection behind a guard built from `settings`."""
    guard = ConnectionGuard(
        max_connections=settings.effective_max_connections,
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
    )
    # No route speaks WebSocket; an upgraded connection would leave the guard.
    return {"http": guard, "ws": "none"}
