"""Deadline-aware admission: a request the work ahead would make miss its deadline is refused at
once (503), not queued to be dropped at its deadline (504) or answered after it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from service.batching import Batcher
from service.errors import DeadlineExceeded, Overloaded
from service.runtime import Runtime
from tests.service.fakes import GatedRuntime, images, make, tiny_runtime, wait_started
from tests.service.tiny_model import TinyModel

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]
SLOW_BATCH_S = 0.05


async def measured_slow(runtime: Runtime) -> tuple[GatedRuntime, Batcher]:
    """A batcher of one image per batch that has measured one batch of >= 50 ms per image,
    its queue empty and its instances free."""
    gated = GatedRuntime(runtime)
    batcher = make(gated, max_batch_size=1)
    gated.gate.clear()
    (first,) = batcher.submit(images(1), frozenset(), None)
    await wait_started(gated)
    await asyncio.sleep(SLOW_BATCH_S)
    gated.gate.set()
    await first.future
    return gated, batcher


async def test_request_that_would_outlast_its_deadline_is_refused_at_once(
    runtime: Runtime,
) -> None:
    gated, batcher = await measured_slow(runtime)
    assert batcher.expected_wait_s(1) >= SLOW_BATCH_S

    gated.started.clear()
    gated.gate.clear()
    queued = batcher.submit(images(4), frozenset(), None)  # no deadline: always queued
    await wait_started(gated)
    depth = batcher.depth
    with pytest.raises(Overloaded):
        batcher.submit(images(1), frozenset(), time.monotonic() + SLOW_BATCH_S / 5)
    assert batcher.depth == depth  # the refused one never entered the queue
    (patient,) = batcher.submit(images(1), frozenset(), time.monotonic() + 30)
    gated.gate.set()
    await asyncio.gather(*(i.future for i in queued), patient.future)
    await batcher.close()


async def test_idle_batcher_admits_a_request_with_a_short_deadline(runtime: Runtime) -> None:
    gated = GatedRuntime(runtime)
    batcher = make(gated)
    assert batcher.expected_wait_s(1) == 0  # no measurement yet, nothing queued
    # As tight as the deadlines refused with work ahead in the tests around.
    (item,) = batcher.submit(images(1), frozenset(), time.monotonic() + SLOW_BATCH_S / 5)
    assert batcher.depth == 1  # admitted: queued, not refused with Overloaded
    await asyncio.wait([item.future])  # computed, or dropped at its deadline on a busy host
    assert item.future.exception() is None or isinstance(item.future.exception(), DeadlineExceeded)
    await batcher.close()


async def test_running_batches_count_as_work_ahead(runtime: Runtime) -> None:
    """Every instance busy and nothing queued: the request would start only when a running batch
    ends and then take its own compute in full, so a deadline shorter than that is refused at
    once; one instance free again, the same deadline is admitted (it runs next)."""
    gated, batcher = await measured_slow(runtime)

    gated.started.clear()
    gated.gate.clear()
    busy = [batcher.submit(images(1), frozenset(), None)[0] for _ in range(runtime.instances)]
    await wait_started(gated)
    while batcher.depth:  # every image dispatched: the queue is empty, no instance is free
        await asyncio.sleep(0.001)
    assert batcher.expected_wait_s(1) >= SLOW_BATCH_S
    depth = batcher.depth
    with pytest.raises(Overloaded):
        batcher.submit(images(1), frozenset(), time.monotonic() + SLOW_BATCH_S / 5)
    assert batcher.depth == depth
    gated.gate.set()
    await asyncio.gather(*(i.future for i in busy))
    (next_up,) = batcher.submit(images(1), frozenset(), time.monotonic() + SLOW_BATCH_S / 5)
    await next_up.future  # nothing ahead: admitted however tight, and computed in time here
    await batcher.close()


async def test_images_still_decoding_count_as_work_ahead(runtime: Runtime) -> None:
    gated, batcher = await measured_slow(runtime)
    assert batcher.depth == 0

    tight = time.monotonic() + SLOW_BATCH_S / 5
    with batcher.admission(8, None) as decoding:  # 8 images admitted, still being decoded
        assert batcher.expected_wait_s(1) >= 9 * SLOW_BATCH_S / runtime.instances
        with pytest.raises(Overloaded), batcher.admission(1, tight):
            pass  # refused before its own decoding: the 8 are ahead of it
        items = batcher.submit(images(8), frozenset(), None, decoding)  # their queue place now
        assert batcher.expected_wait_s(1) >= 9 * SLOW_BATCH_S / runtime.instances
    await asyncio.gather(*(i.future for i in items))
    with batcher.admission(1, tight):  # nothing ahead any more: admitted however tight
        pass
    assert batcher.expected_wait_s(0) == 0
    await batcher.close()


async def test_alone_and_side_by_side_are_measured_apart(
    tiny_repo: Path, tiny_cnn: TinyModel
) -> None:
    """A batch beside another shares the cores: its seconds per image are kept apart from a lone
    batch's, and a request that would run beside a busy instance is judged by them."""
    gated = GatedRuntime(tiny_runtime(tiny_repo, tiny_cnn, instances=2))
    batcher = make(gated, max_batch_size=1)
    gated.gate.clear()
    (alone,) = batcher.submit(images(1), frozenset(), None)
    await wait_started(gated)
    gated.started.clear()
    (beside,) = batcher.submit(images(1), frozenset(), None)
    await wait_started(gated)
    await asyncio.sleep(2 * SLOW_BATCH_S)
    gated.gate.set()
    await asyncio.gather(alone.future, beside.future)
    assert batcher.pool.times.per_image(alone=False) >= 2 * SLOW_BATCH_S
    beside_s = batcher.pool.times.per_image(alone=False)
    (quick,) = batcher.submit(images(1), frozenset(), None)  # alone, the gate open
    await quick.future
    assert batcher.pool.times.per_image(alone=False) == beside_s  # untouched by a lone batch
    assert batcher.pool.times.per_image(alone=True) < beside_s

    gated.gate.clear()
    gated.started.clear()
    (busy,) = batcher.submit(images(1), frozenset(), None)
    await wait_started(gated)
    assert batcher.expected_wait_s(1) >= batcher.pool.times.per_image(
        alone=False
    )  # it would run beside
    gated.gate.set()
    await busy.future
    await batcher.close()
