"""The instance pool's parts: `InstanceThread` (a job's outcome reaches the loop's future, jobs
run in order, the watchdog gives up on a job that outlives it, counted from its start: the run
itself goes on, its late outcome is dropped; a job that raises or hangs displaces the jobs
behind it) and `start_after`, when instances coming free reach work behind a queue."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

import numpy as np
import pytest

from service.pool import Displaced, InstanceThread, Stalled, start_after
from service.runtime import Outputs

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


def outputs() -> Outputs:
    return {"logits": np.arange(3, dtype=np.float32)}


def recording(
    ran: list[str], name: str, release: threading.Event | None = None
) -> Callable[[], Outputs]:
    """A job that waits for `release` (if given), then notes `name` in `ran`."""

    def job() -> Outputs:
        if release is not None:
            release.wait(10)
        ran.append(name)
        return outputs()

    return job


async def test_result_and_error_reach_the_future() -> None:
    thread = InstanceThread("test-instance")
    try:
        result = await thread.submit(outputs, timeout_s=10)
        np.testing.assert_array_equal(result["logits"], [0, 1, 2])

        def fail() -> Outputs:
            raise ValueError("bad batch")

        with pytest.raises(ValueError, match="bad batch"):
            await thread.submit(fail, timeout_s=10)
    finally:
        thread.stop()


async def test_watchdog_gives_up_on_a_hung_job_and_drops_its_late_outcome() -> None:
    release = threading.Event()
    finished = threading.Event()

    def hang() -> Outputs:
        release.wait(10)
        finished.set()
        return outputs()

    thread = InstanceThread("test-instance")
    try:
        hung = thread.submit(hang, timeout_s=0.05)
        with pytest.raises(Stalled):
            await hung
        release.set()
        await asyncio.to_thread(finished.wait, 10)
        await asyncio.sleep(0.05)  # the late outcome's call_soon_threadsafe has run
        assert isinstance(hung.exception(), Stalled)  # unchanged by the late result
        # The thread goes on with the next job; a job without a watchdog never expires.
        assert (await thread.submit(outputs))["logits"].shape == (3,)
    finally:
        thread.stop()


async def test_a_job_behind_another_starts_its_watchdog_as_that_one_returns() -> None:
    release = threading.Event()
    order: list[str] = []
    thread = InstanceThread("test-instance")
    try:
        first = thread.submit(recording(order, "slow", release), timeout_s=10)
        behind = thread.submit(recording(order, "quick"), timeout_s=0.1)
        await asyncio.sleep(0.3)  # longer than the job behind may run: it has not started
        assert not behind.done()
        release.set()
        await first
        assert (await behind)["logits"].shape == (3,)
        assert order == ["slow", "quick"]
    finally:
        thread.stop()


async def test_jobs_behind_a_raising_job_are_displaced_until_resume() -> None:
    release = threading.Event()

    def fail() -> Outputs:
        release.wait(10)
        raise ValueError("bad batch")

    thread = InstanceThread("test-instance")
    try:
        failing = thread.submit(fail, timeout_s=10)
        behind = thread.submit(outputs, timeout_s=10)
        release.set()
        with pytest.raises(ValueError, match="bad batch"):
            await failing
        with pytest.raises(Displaced):
            await behind
        with pytest.raises(Displaced):  # halted: nothing runs until resumed
            await thread.submit(outputs, timeout_s=10)
        thread.resume()
        assert (await thread.submit(outputs, timeout_s=10))["logits"].shape == (3,)
    finally:
        thread.stop()


async def test_abandoning_a_hung_thread_displaces_the_jobs_behind_it() -> None:
    release = threading.Event()
    ran: list[str] = []
    thread = InstanceThread("test-abandoned")
    hung = thread.submit(recording(ran, "hung", release), timeout_s=0.05)
    behind = thread.submit(recording(ran, "behind"), timeout_s=10)
    with pytest.raises(Stalled):
        await hung
    thread.abandon()
    with pytest.raises(Displaced):
        await behind
    release.set()  # the hung job returns; the thread then ends without running the other
    (native,) = [t for t in threading.enumerate() if t.name == "test-abandoned"]
    await asyncio.to_thread(native.join, 10)
    assert not native.is_alive()
    assert ran == ["hung"]  # it returned; the job behind it never ran


def test_start_after_shares_the_work_ahead_as_instances_free() -> None:
    assert start_after([0.0], 0.0) == 0.0
    assert start_after([0.0, 0.0], 0.1) == pytest.approx(0.05)  # two idle instances share it
    assert start_after([0.02, 0.1], 0.0) == pytest.approx(0.02)  # first to free takes it
    assert start_after([0.02, 0.1], 0.05) == pytest.approx(0.07)  # done before the second frees
    assert start_after([0.02, 0.1], 0.1) == pytest.approx(0.11)  # 0.08 alone, then 0.02 / 2
    assert start_after([0.0, 0.0, 0.3], 0.3) == pytest.approx(0.15)
