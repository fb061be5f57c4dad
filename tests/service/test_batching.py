"""Batcher behaviour with a real ORT session; only the runtime's slowness is controlled."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from service.errors import DeadlineExceeded, InvalidOption, NotReady, Overloaded
from service.runtime import Runtime
from tests.service.fakes import GatedRuntime, images, make, wait_started

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]


async def test_results_in_order_and_equal_to_direct_run(runtime: Runtime) -> None:
    gated = GatedRuntime(runtime)
    batcher = make(gated)
    tensors = images(5)
    items = batcher.submit(tensors, frozenset(), None)
    results = await asyncio.gather(*(i.future for i in items))
    direct = runtime.run(0, np.stack(tensors), ["logits"])["logits"]
    for index, result in enumerate(results):
        np.testing.assert_allclose(result["logits"], direct[index], rtol=1e-5, atol=1e-6)
    assert set(results[0]) == {"logits"}  # only the outputs the batch needs
    await batcher.close()


async def test_idle_runtime_runs_a_lone_request_at_once(runtime: Runtime) -> None:
    gated = GatedRuntime(runtime)
    batcher = make(gated, max_queue_delay_s=30.0)  # would time the test out if applied
    (item,) = batcher.submit(images(1), frozenset(), None)
    await asyncio.wait_for(item.future, 10)
    assert gated.calls == [(1, ("logits",))]
    await batcher.close()


async def test_a_batch_runs_alone_only_while_nothing_else_waits(runtime: Runtime) -> None:
    """The runtime may give a batch every core (its solo session) only while the batcher has no
    other images queued or being decoded: under load the other cores decode the next ones."""
    gated = GatedRuntime(runtime)
    batcher = make(gated)
    (lone,) = batcher.submit(images(1), frozenset(), None)
    await lone.future
    with batcher.admission(1, None):  # another request's image, being decoded
        (beside,) = batcher.submit(images(1, start=1), frozenset(), None)
        await beside.future
    (lone,) = batcher.submit(images(1, start=2), frozenset(), None)
    await lone.future
    assert gated.alone == [True, False, True]
    await batcher.close()


async def test_busy_runtime_batches_up_to_max_size(runtime: Runtime) -> None:
    gated = GatedRuntime(runtime)
    gated.gate.clear()
    batcher = make(gated, max_batch_size=3, max_queue_delay_s=0.01)
    first = batcher.submit(images(1), frozenset(), None)
    await wait_started(gated)
    rest = batcher.submit(images(7, start=1), frozenset({"fm.features.conv1"}), None)
    await asyncio.sleep(0.05)
    gated.gate.set()
    results = await asyncio.gather(*(i.future for i in first + rest))
    assert [size for size, _ in gated.calls] == [1, 3, 3, 1]
    assert gated.calls[1][1] == ("fm.features.conv1", "logits")
    assert [float(b[0, 0, 0, 0]) for b in gated.inputs] == [0, 1, 4, 7]  # FIFO
    assert "fm.features.conv1" in results[1]
    await batcher.close()


async def test_images_being_decoded_hold_their_queue_places(runtime: Runtime) -> None:
    """A request that would not fit beside the queued images and those still being decoded is
    refused at admission, before its own are decoded; an admitted request then always fits."""
    gated = GatedRuntime(runtime)
    gated.gate.clear()
    batcher = make(gated, max_batch_size=1, max_queue_size=3)
    batcher.submit(images(1), frozenset(), None)
    await wait_started(gated)  # that one computing, held at the gate: the queue is empty
    queued = batcher.submit(images(1, start=1), frozenset(), None)
    with batcher.admission(2, None) as decoding:
        with pytest.raises(Overloaded, match="queue full"), batcher.admission(1, None):
            pass
        admitted = batcher.submit(images(2, start=2), frozenset(), None, decoding)
    assert batcher.depth == 3
    with pytest.raises(Overloaded, match="queue full"), batcher.admission(1, None):
        pass
    gated.gate.set()
    await asyncio.gather(*(i.future for i in queued + admitted))
    await batcher.close()


async def test_a_full_batch_waits_behind_the_running_one_on_its_thread(runtime: Runtime) -> None:
    """While every instance is busy, a full batch is handed to a busy instance's thread and
    starts the moment the batch ahead returns, with the event loop blocked meanwhile: no
    hand-off through the loop leaves the core idle between two batches."""
    gated = GatedRuntime(runtime)
    gated.gate.clear()
    batcher = make(gated, max_batch_size=1)
    (first,) = batcher.submit(images(1), frozenset(), None)
    await wait_started(gated)
    (second,) = batcher.submit(images(1, start=1), frozenset(), None)
    await asyncio.sleep(0.05)
    assert batcher.depth == 0  # not in the queue: waiting on the instance's thread
    gated.gate.set()
    blocked_until = time.monotonic() + 10  # the loop runs nothing while this waits
    while len(gated.calls) < 2 and time.monotonic() < blocked_until:
        time.sleep(0.001)
    assert gated.sizes == [1, 1]
    results = [await first.future, await second.future]
    direct = runtime.run(0, np.stack(images(2)), ["logits"])["logits"]
    for index, result in enumerate(results):
        np.testing.assert_allclose(result["logits"], direct[index], rtol=1e-5, atol=1e-6)
    assert gated.alone == [True, False]  # one waiting behind another never takes every core
    await batcher.close()


async def test_a_batch_waiting_behind_another_is_not_computed_past_its_deadline(
    runtime: Runtime,
) -> None:
    gated = GatedRuntime(runtime)
    gated.gate.clear()
    batcher = make(gated, max_batch_size=1)
    (first,) = batcher.submit(images(1), frozenset(), None)
    await wait_started(gated)
    (late,) = batcher.submit(images(1, start=1), frozenset(), time.monotonic() + 0.05)
    await asyncio.sleep(0.02)
    assert batcher.depth == 0  # waiting behind the running batch
    await asyncio.sleep(0.1)
    gated.gate.set()
    with pytest.raises(DeadlineExceeded, match="before compute"):
        await late.future
    await first.future
    assert gated.sizes == [1]
    await batcher.close()


async def test_queue_full_is_overloaded(runtime: Runtime) -> None:
    gated = GatedRuntime(runtime)
    gated.gate.clear()
    batcher = make(gated, max_batch_size=1, max_queue_size=2)
    batcher.submit(images(1), frozenset(), None)
    await wait_started(gated)
    accepted, refused = 0, 0
    for tensor in images(10):
        try:
            batcher.submit([tensor], frozenset(), None)
            accepted += 1
        except Overloaded:
            refused += 1
        await asyncio.sleep(0)
    assert refused > 0
    # The queue, the batch waiting behind the running one, and the one the worker holds.
    assert accepted <= 2 + 2
    with pytest.raises(Overloaded):  # a request that cannot fit now is refused whole
        batcher.submit(images(2), frozenset(), None)
    with pytest.raises(InvalidOption):  # one that can never fit is a bad request, not a 503
        batcher.submit(images(3), frozenset(), None)
    with pytest.raises(InvalidOption), batcher.admission(3, None):
        pass
    gated.gate.set()
    await batcher.close()


async def test_deadline_passed_before_compute_is_dropped(runtime: Runtime) -> None:
    gated = GatedRuntime(runtime)
    gated.gate.clear()
    batcher = make(gated)
    batcher.submit(images(1), frozenset(), None)
    await wait_started(gated)
    (late,) = batcher.submit(images(1, start=5), frozenset(), time.monotonic() + 0.01)
    (fine,) = batcher.submit(images(1, start=6), frozenset(), None)
    await asyncio.sleep(0.05)
    gated.gate.set()
    with pytest.raises(DeadlineExceeded):
        await late.future
    await fine.future
    assert [size for size, _ in gated.calls] == [1, 1]
    assert float(gated.inputs[1][0, 0, 0, 0]) == 6
    await batcher.close()


async def test_cancelled_request_is_not_computed(runtime: Runtime) -> None:
    gated = GatedRuntime(runtime)
    gated.gate.clear()
    batcher = make(gated)
    batcher.submit(images(1), frozenset(), None)
    await wait_started(gated)
    (gone,) = batcher.submit(images(1, start=3), frozenset(), None)
    (kept,) = batcher.submit(images(1, start=4), frozenset(), None)
    gone.future.cancel()
    gated.gate.set()
    await kept.future
    assert [float(b[i, 0, 0, 0]) for b in gated.inputs for i in range(len(b))] == [0, 4]
    await batcher.close()


async def test_close_drains_accepted_work_then_refuses(runtime: Runtime) -> None:
    gated = GatedRuntime(runtime)
    gated.gate.clear()
    batcher = make(gated, max_batch_size=2)
    items = batcher.submit(images(5), frozenset(), None)
    await wait_started(gated)
    closing = asyncio.ensure_future(batcher.close())
    await asyncio.sleep(0.01)
    with pytest.raises(NotReady):
        batcher.submit(images(1), frozenset(), None)
    gated.gate.set()
    await closing
    assert all(i.future.done() and not i.future.cancelled() for i in items)
    assert sum(size for size, _ in gated.calls) == 5


async def test_failed_batch_fails_all_its_futures(runtime: Runtime) -> None:
    batcher = make(GatedRuntime(runtime))
    wrong = [np.zeros((2, 16, 16), dtype=np.float32)]  # wrong channel count: ORT raises
    items = batcher.submit(wrong, frozenset(), None)
    with pytest.raises(Exception, match="(?i)invalid|dimension|shape"):
        await items[0].future
    await batcher.close()


async def test_batches_are_capped_to_the_compute_budget(runtime: Runtime) -> None:
    """Measured >= 30 ms per image with a 50 ms budget: at most 1 image in the next batch, and
    never more than 2 while the average comes down; without a budget all 6 go at once."""
    for budget_s, most in ((0.05, 2), (0.0, 6)):
        gated = GatedRuntime(runtime)
        batcher = make(gated, max_batch_size=8, max_batch_compute_s=budget_s)
        gated.gate.clear()
        (first,) = batcher.submit(images(1), frozenset(), None)
        await wait_started(gated)
        await asyncio.sleep(0.03)  # this batch of one measures >= 30 ms per image
        queued = batcher.submit(images(6, start=1), frozenset(), None)
        gated.gate.set()
        await asyncio.gather(first.future, *(i.future for i in queued))
        sizes = [size for size, _ in gated.calls[1:]]
        assert sum(sizes) == 6, sizes
        assert max(sizes) <= most, sizes
        assert sizes[0] == (1 if budget_s else 6), sizes
        await batcher.close()
