"""Batcher recovery from runtime faults: the failing batch alone is answered with an error, the
instance is out of service (not `available`) until its session is recreated, queued work then
runs. The runner is a fake only in how it fails: a real crash or hang cannot be caused."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest

from service.batching import Batcher
from service.errors import RuntimeFailure, RuntimeStalled
from service.metrics import Metrics
from service.runtime import Outputs

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]
ROW = np.zeros((1, 4, 4), dtype=np.float32)


class FaultyRunner:
    """First `run` waits for `release_first` (set from the start for "raise"), then raises
    ("raise") or returns ("stall": held there, it hangs); `recreate` waits for
    `allow_recreate`. Later runs answer the batch size as their logits."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.runs = 0
        self.recreated = 0
        self.allow_recreate = threading.Event()
        self.release_first = threading.Event()
        if mode == "raise":
            self.release_first.set()

    @property
    def instances(self) -> int:
        return 1

    def run(
        self,
        instance: int,
        batch: npt.NDArray[np.float32],
        outputs: Sequence[str],
        *,
        alone: bool = True,
    ) -> Outputs:
        self.runs += 1
        if self.runs == 1:
            self.release_first.wait(30)
            if self.mode == "raise":
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return {"logits": np.full((len(batch), 1), len(batch), dtype=np.float32)}

    def recreate(self, instance: int) -> None:
        self.allow_recreate.wait(30)
        self.recreated += 1


def _batcher(runner: FaultyRunner, timeout_s: float = 0.0, max_batch_size: int = 8) -> Batcher:
    return Batcher(
        runner,
        model="m",
        required_outputs=["logits"],
        max_batch_size=max_batch_size,
        max_queue_delay_s=0.0,
        max_queue_size=64,
        metrics=Metrics(gpu=False),
        batch_timeout_s=timeout_s,
    )


async def _recovers(batcher: Batcher, runner: FaultyRunner) -> None:
    """Unavailable while recreating, queued work waits; then it runs and all is well again."""
    assert not batcher.pool.available
    queued = batcher.submit([ROW, ROW], frozenset(), None)
    await asyncio.sleep(0.1)
    assert not queued[0].future.done()
    runner.allow_recreate.set()
    results = [await item.future for item in queued]
    assert [float(r["logits"][0]) for r in results] == [2.0, 2.0]
    assert batcher.pool.available
    assert runner.recreated == 1


async def test_raising_batch_fails_alone_and_the_session_is_recreated() -> None:
    runner = FaultyRunner("raise")
    batcher = _batcher(runner)
    failing = batcher.submit([ROW], frozenset(), None)
    with pytest.raises(RuntimeFailure, match="illegal memory access") as caught:
        await failing[0].future
    assert caught.value.status_code == 503
    await _recovers(batcher, runner)
    await batcher.close()


async def test_hung_batch_times_out_and_its_thread_is_abandoned() -> None:
    runner = FaultyRunner("stall")
    batcher = _batcher(runner, timeout_s=0.2)
    hung = batcher.submit([ROW], frozenset(), None)
    with pytest.raises(RuntimeStalled) as caught:
        await hung[0].future
    assert caught.value.status_code == 504
    await _recovers(batcher, runner)  # served by a new thread while the old one still hangs
    runner.release_first.set()
    await batcher.close()


@pytest.mark.parametrize("mode", ["raise", "stall"])
async def test_a_batch_waiting_behind_a_failing_one_runs_after_recovery(mode: str) -> None:
    """A batch handed to the instance's thread behind the one that fails is never run on the
    failed session: it goes back to the queue and is answered once the session is recreated."""
    runner = FaultyRunner(mode)
    runner.release_first.clear()
    batcher = _batcher(runner, timeout_s=0.3, max_batch_size=1)
    (failing,) = batcher.submit([ROW], frozenset(), None)
    while runner.runs < 1:
        await asyncio.sleep(0.001)
    (behind,) = batcher.submit([ROW], frozenset(), None)
    await asyncio.sleep(0.05)
    assert batcher.depth == 0  # waiting on the instance's thread
    if mode == "raise":
        runner.release_first.set()
    with pytest.raises(RuntimeStalled if mode == "stall" else RuntimeFailure):
        await failing.future
    await asyncio.sleep(0.1)
    assert not behind.future.done()
    assert runner.runs == 1
    runner.allow_recreate.set()
    assert float((await behind.future)["logits"][0]) == 1.0
    assert runner.recreated == 1
    runner.release_first.set()
    await batcher.close()
