"""Dynamic batching for one model version (docs/service.md, Batching).

One bounded queue (a deque with a size check: `submit` never blocks, a full queue raises
`Overloaded`) feeds one worker task. The worker takes what is waiting, up to `max_batch_size`
and to what fits the compute budget (`batch_limit`). While every instance of the pool
(service/pool.py) is busy it lets the batch fill for at most `max_queue_delay_s`; an idle
instance runs it at once, and a full batch waits on a busy instance's thread, behind its running
batch. Expired or cancelled requests are dropped before compute.

A request whose deadline has passed is answered `DeadlineExceeded` (504) without queueing; one
that the work ahead of it and its own compute would finish past its deadline (`admit`) is
refused at once with `Overloaded` (503, Retry-After) instead of being answered after it.

A batch that fails (`RuntimeFailure`, 503) or outlives the watchdog (`RuntimeStalled`, 504)
fails its own futures; the pool recreates the session it ran on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from service.errors import (
    DeadlineExceeded,
    InvalidOption,
    NonFiniteOutput,
    NotReady,
    Overloaded,
    RuntimeFailure,
    RuntimeStalled,
)
from service.metrics import Metrics
from service.pool import BatchRunner, Displaced, InstancePool, Lease
from service.runtime import Outputs

logger = logging.getLogger(__name__)


class Reservation:
    """Admitted images' place ahead of later requests, from admission until queued."""

    def __init__(self, batcher: Batcher, count: int) -> None:
        self._batcher = batcher
        self._count = count

    def release(self) -> None:
        self._batcher._reserved -= self._count
        self._count = 0


@dataclass
class Item:
    """One image waiting for compute."""

    tensor: npt.NDArray[np.float32]
    outputs: frozenset[str]
    deadline: float | None  # time.monotonic() value, None: no deadline
    future: asyncio.Future[Outputs]
    enqueued: float = field(default_factory=time.perf_counter)
    queue_s: float = 0.0
    compute_s: float = 0.0


class Batcher:
    """The queue of one model version, the batches it forms and the deadlines it keeps; its
    `pool` computes them."""

    def __init__(
        self,
        runner: BatchRunner,
        *,
        model: str,
        required_outputs: Sequence[str],
        max_batch_size: int,
        max_queue_delay_s: float,
        max_queue_size: int,
        metrics: Metrics,
        batch_timeout_s: float = 0.0,
        max_batch_compute_s: float = 0.0,
    ) -> None:
        self.model = model
        self._required = tuple(required_outputs)
        self.max_batch_size = max_batch_size
        self._delay_s = max_queue_delay_s
        self._compute_budget_s = max_batch_compute_s
        self._max_queue = max_queue_size
        self._metrics = metrics
        # This version's series, looked up once (labels() takes a lock and builds a key).
        self._depth_gauge = metrics.queue_depth.labels(model)
        self._queue_seconds = metrics.queue_duration.labels(model)
        self._batch_sizes = metrics.batch_size.labels(model)
        self._pending: deque[Item] = deque()
        self._wakeup = asyncio.Event()
        # An instance coming free wakes the worker: a filling batch then runs at once.
        self.pool = InstancePool(
            runner,
            model=model,
            metrics=metrics,
            batch_timeout_s=batch_timeout_s,
            on_free=self._wakeup.set,
        )
        self._running: set[asyncio.Task[None]] = set()
        self._reserved = 0  # images admitted and being decoded, not queued yet
        self._closing = False
        self._worker = asyncio.get_running_loop().create_task(
            self._guarded_work(), name=f"batcher-{model}"
        )

    @property
    def depth(self) -> int:
        return len(self._pending)

    @contextlib.contextmanager
    def admission(self, count: int, deadline: float | None) -> Iterator[Reservation]:
        """Admit `count` images before they are decoded (Overloaded when hopeless, see `admit`)
        and hold their place until `submit` queues them or the block ends: the images being
        decoded count as work ahead of later requests, so a flood is refused before it piles
        up in the decode pool. The queue holds their places too: a request whose images would
        not fit beside those queued and those still decoding is refused before it is decoded
        (Overloaded, as `submit` refuses a full queue)."""
        self._check_fits(count)
        self._check_room(count, self._reserved)
        self.admit(count, deadline)
        reservation = Reservation(self, count)
        self._reserved += count
        try:
            yield reservation
        finally:
            reservation.release()

    def _check_fits(self, count: int) -> None:
        """InvalidOption (400) for a request larger than the whole queue: unlike a full queue's
        503, no retry could help it."""
        if count > self._max_queue:
            raise InvalidOption(
                f"{count} images in one request, more than the queue's {self._max_queue} "
                "places (CONVSERVE_MAX_QUEUE_SIZE)",
                model=self.model,
            )

    def _check_room(self, count: int, decoding: int) -> None:
        """Overloaded when `count` more images would not fit in the queue beside those queued
        and `decoding` others holding places."""
        if len(self._pending) + decoding + count > self._max_queue:
            raise Overloaded(f"{self.model}: queue full, retry later", model=self.model)

    def admit(self, count: int, deadline: float | None) -> None:
        """Overloaded when `count` more images would be computed only after `deadline` (a
        monotonic time) because of the work ahead (running batches, queued images, images still
        decoding): they would wait to be dropped (504), or be answered after the client stopped
        waiting, so refuse them now, cheaply. With nothing ahead (nothing queued, decoding or
        running) it never refuses: that request runs next, alone, and is dropped (504)
        only if its deadline passes first."""
        if deadline is None or not self._work_ahead():
            return
        if time.monotonic() + self.expected_wait_s(count) > deadline:
            raise Overloaded(
                f"{self.model}: the work ahead would finish the request past its deadline, "
                "retry later",
                model=self.model,
            )

    def _work_ahead(self) -> bool:
        """Images queued or decoding, or a batch running (beside which the request's own batch
        would share the cores)."""
        return bool(self._pending or self._reserved or self.pool.busy)

    def expected_wait_s(self, count: int) -> float:
        """Seconds until `count` more images would be computed (`InstancePool.wait_s`) behind
        the work ahead, queued and admitted but still decoding: alone if nothing runs or waits,
        else beside others."""
        ahead = len(self._pending) + self._reserved
        return self.pool.wait_s(ahead, count, alone=not self._work_ahead())

    def submit(
        self,
        tensors: Sequence[npt.NDArray[np.float32]],
        outputs: frozenset[str],
        deadline: float | None,
        reservation: Reservation | None = None,
    ) -> list[Item]:
        """Queue every image of one request, or none of them (Overloaded when they don't fit);
        the request's `admission` reservation, if any, becomes its place in the queue."""
        if reservation is not None:
            reservation.release()
        if self._closing:
            raise NotReady(f"{self.model} is shutting down", model=self.model)
        self._check_fits(len(tensors))
        self._check_room(len(tensors), 0)  # an admitted request's place was held for it
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded("deadline passed before compute", model=self.model)
        self.admit(len(tensors), deadline)
        loop = asyncio.get_running_loop()
        items = [Item(t, outputs, deadline, loop.create_future()) for t in tensors]
        self._pending.extend(items)
        self._depth_gauge.inc(len(items))
        self._wakeup.set()
        return items

    async def close(self) -> None:
        """Stop accepting, finish everything accepted, then stop the worker and the pool."""
        self._closing = True
        self._wakeup.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self._worker
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        await self.pool.close()

    def batch_limit(self) -> int:
        """Images per batch: `max_batch_size`, or fewer when the measured compute seconds per
        image would make a full batch outlast `max_batch_compute_s`. On CPU a float32 ResNet
        computes no faster per image in a batch, and every image in it waits for the whole batch
        (docs/benchmarks.md), so it runs one or two at a time; a tiny model still batches fully."""
        image_s = self.pool.times.slowest  # a batch may run beside another
        if not self._compute_budget_s or not image_s:
            return self.max_batch_size
        fits = int(self._compute_budget_s / image_s)
        return max(1, min(self.max_batch_size, fits))

    def _trim(self, batch: list[Item]) -> None:
        """Put the images past `batch_limit` back, first in line."""
        extra = batch[self.batch_limit() :]
        if extra:
            del batch[len(batch) - len(extra) :]
            self._pending.extendleft(reversed(extra))
            self._depth_gauge.inc(len(extra))
            self._wakeup.set()

    def _take(self, batch: list[Item]) -> None:
        taken = 0
        limit = self.batch_limit()
        while self._pending and len(batch) < limit:
            batch.append(self._pending.popleft())
            taken += 1
        if taken:
            self._depth_gauge.dec(taken)
        if not self._pending:
            self._wakeup.clear()

    async def _wait(self, event: asyncio.Event, timeout_s: float | None) -> bool:
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def _guarded_work(self) -> None:
        """A bug in the worker must not leave requests waiting forever: fail them, refuse more."""
        try:
            await self._work()
        except Exception as err:
            logger.exception("%s: batcher worker failed", self.model)
            self._closing = True
            self._depth_gauge.dec(len(self._pending))
            while self._pending:
                item = self._pending.popleft()
                if not item.future.done():
                    item.future.set_exception(err)
            raise

    async def _work(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch: list[Item] = []
            self._take(batch)
            fill_until = time.monotonic() + self._delay_s
            # Every instance busy: let the batch fill, for at most the queue delay.
            pool = self.pool
            while len(batch) < self.batch_limit() and not pool.has_free and not self._closing:
                remaining = fill_until - time.monotonic()
                if remaining <= 0 or not await self._wait(self._wakeup, remaining):
                    break
                self._take(batch)
            if not pool.has_free:  # a full batch may wait behind a running one
                await pool.wait_room(behind=len(batch) >= self.batch_limit())
            self._take(batch)  # what arrived while waiting for an instance
            self._trim(batch)  # to the limit measured meanwhile
            ready = self._drop_unservable(batch)
            if not ready:
                continue
            lease = pool.claim(len(ready), alone=not self._work_ahead())
            task = asyncio.get_running_loop().create_task(self._run(lease, ready))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _drop_unservable(self, batch: list[Item]) -> list[Item]:
        """Items whose client is gone or whose deadline passed never reach compute."""
        now = time.monotonic()
        ready = []
        for item in batch:
            if item.future.done():  # cancelled: its request failed (counted there) or gave up
                continue
            if item.deadline is not None and now >= item.deadline:
                item.future.set_exception(
                    DeadlineExceeded("deadline passed before compute", model=self.model)
                )
                continue
            ready.append(item)
        return ready

    async def _run(self, lease: Lease, items: list[Item]) -> None:
        outputs = sorted(set(self._required).union(*(i.outputs for i in items)))
        if len(items) == 1:  # a view, not a copy (a ResNet input is 600 KB)
            batch = np.ascontiguousarray(items[0].tensor[None])
        else:
            batch = np.stack([item.tensor for item in items])
        # Past the last deadline among them, none is computed (one waiting behind a running
        # batch may get there before it starts).
        deadlines = [item.deadline for item in items if item.deadline is not None]
        expires = max(deadlines) if len(deadlines) == len(items) else None
        try:
            computed = await self.pool.run(lease, batch, outputs, expires=expires)
        except Displaced:  # waited behind a batch that failed: first in line again
            self._pending.extendleft(reversed(items))
            self._depth_gauge.inc(len(items))
            self._wakeup.set()
            return
        except (RuntimeFailure, RuntimeStalled, DeadlineExceeded) as err:
            for item in items:
                if not item.future.done():
                    item.future.set_exception(err)
            return
        result, nonfinite = computed.outputs, computed.nonfinite
        for item in items:
            item.queue_s = computed.started - item.enqueued
            self._queue_seconds.observe(item.queue_s)
        self._batch_sizes.observe(len(items))
        for index, item in enumerate(items):
            item.compute_s = computed.seconds
            if item.future.done():
                continue
            invalid = [
                name
                for name in nonfinite.get(index, ())
                if name in item.outputs or name in self._required
            ]
            if invalid:  # JSON cannot carry NaN, and no class can be read from it
                item.future.set_exception(
                    NonFiniteOutput(
                        f"{self.model}: output {', '.join(invalid)} holds NaN or infinity for "
                        "this input (values near float32's limit overflow the model)",
                        model=self.model,
                    )
                )
            else:
                item.future.set_result({name: value[index] for name, value in result.items()})
