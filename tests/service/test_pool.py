"""The instance pool's parts: `InstanceThread` (a job's outcome reaches the loop's future, and
the watchdog gives up on a job that outlives it: the run itself goes on, its late outcome is
dropped) and `start_after`, when instances coming free reach work behind a queue."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from service.pool import InstanceThread, Stalled, start_after
from service.runtime import Outputs

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


def outputs() -> Outputs:
    return {"logits": np.arange(3, dtype=np.float32)}


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


def test_start_after_shares_the_work_ahead_as_instances_free() -> None:
    assert start_after([0.0], 0.0) == 0.0
    assert start_after([0.0, 0.0], 0.1) == pytest.approx(0.05)  # two idle instances share it
    assert start_after([0.02, 0.1], 0.0) == pytest.approx(0.02)  # first to free takes it
    assert start_after([0.02, 0.1], 0.05) == pytest.approx(0.07)  # done before the second frees
    assert start_after([0.02, 0.1], 0.1) == pytest.approx(0.11)  # 0.08 alone, then 0.02 / 2
    assert start_after([0.0, 0.0, 0.3], 0.3) == pytest.approx(0.15)
