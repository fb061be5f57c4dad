"""Event-loop lag: measured for real by blocking the loop, and used by the edge middleware to
refuse at once the inference requests whose deadline is shorter than the lag."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from service.api.edge import EdgeMiddleware
from service.looplag import LoopLag
from service.metrics import Metrics

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]
BLOCK_S = 0.2


async def _lagging() -> tuple[LoopLag, asyncio.Task[None]]:
    lag = LoopLag(interval_s=0.002)
    task = asyncio.create_task(lag.run())
    await asyncio.sleep(0.01)
    time.sleep(BLOCK_S)  # the loop is blocked, as a saturated one is
    for _ in range(3):  # the overdue sleeper wakes (late) and records it
        await asyncio.sleep(0)
    return lag, task


async def test_a_blocked_loop_shows_as_lag_that_then_decays() -> None:
    lag, task = await _lagging()
    peak = lag.lag_s
    # The sleeper due during the block woke only once the loop was free again: a lower bound
    # that a busy host can only raise.
    assert peak >= BLOCK_S - lag.interval_s
    # Then forgotten wake-up by wake-up (the test's timeout catches a lag that never decays).
    while lag.lag_s >= peak / 10:
        await asyncio.sleep(lag.interval_s)
    task.cancel()


async def _call(app: EdgeMiddleware, path: str, timeout_ms: str | None) -> int:
    headers = [(b"content-length", b"0")]
    if timeout_ms is not None:
        headers.append((b"x-request-timeout-ms", timeout_ms.encode()))
    state = SimpleNamespace(metrics=Metrics())
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": headers,
        "app": SimpleNamespace(state=state),
        "state": {},
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return int(sent[0]["status"])


async def test_requests_with_a_deadline_shorter_than_the_lag_are_refused_at_once() -> None:
    async def ok(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    lag, task = await _lagging()
    edge = EdgeMiddleware(
        ok,
        max_body_bytes=1024,
        max_body_memory_bytes=1024,
        body_timeout_s=0,
        max_inflight_requests=8,
        loop_lag=lag,
    )
    short = str(BLOCK_S * 1000 / 4)
    assert await _call(edge, "/v1/models/m/classify", short) == 503
    assert await _call(edge, "/v2/models/m/infer", short) == 503
    assert await _call(edge, "/v1/models/m/classify", "60000") == 200  # the budget allows it
    assert await _call(edge, "/v1/models/m/classify", None) == 200  # no deadline: never shed
    assert await _call(edge, "/health/ready", short) == 200  # not an inference route
    task.cancel()
