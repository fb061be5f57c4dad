"""The model instances of one loaded version, their threads, watchdog, recovery and compute
estimates (docs/service.md, Batching).

`InstancePool` lends an instance per batch (`claim`) and runs the batch on that instance's own
daemon thread (`run`): ONNX Runtime releases the GIL in `run`, so instances compute in
parallel, never on the event loop. While every instance is busy, a full batch may wait on a
busy instance's thread, behind its running batch, and starts the moment that one returns:
going back through the event loop between two batches would leave the core idle for as long as
the loop is busy with HTTP. A batch whose `run` raises fails with `RuntimeFailure` (503); one
that outlives the watchdog (`batch_timeout_s`, counted from its start) fails with
`RuntimeStalled` (504), and its thread, stuck in a `run` that cannot be interrupted, is abandoned
(it never blocks exit) for a new one. Either way the instance leaves service while its session
is recreated in the background, retried until it works, and a batch waiting behind the failed
one goes back to the queue (`Displaced`).

Compute estimates: measured seconds per image, kept apart for a batch that ran alone and one
that ran beside another (on CPU it shares the cores), give how long work ahead will take
(`wait_s`) and how many images fit a compute budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from service.errors import DeadlineExceeded, RuntimeFailure, RuntimeStalled
from service.metrics import Metrics
from service.runtime import Outputs

logger = logging.getLogger(__name__)

RECOVERY_RETRY_S = 1.0
SMOOTHING = 0.2  # weight of the newest batch in the seconds-per-image average


class BatchRunner(Protocol):
    """What the pool's instances run: `runtime.Runtime` in the service."""

    @property
    def instances(self) -> int: ...

    def run(
        self,
        instance: int,
        batch: npt.NDArray[np.float32],
        outputs: Sequence[str],
        *,
        alone: bool = True,
    ) -> Outputs: ...

    def recreate(self, instance: int) -> None: ...


# The rows (images) of a batch whose outputs hold NaN or infinity, each with those outputs' names.
NonFinite = dict[int, list[str]]
T = TypeVar("T")


def nonfinite_rows(outputs: Outputs) -> NonFinite:
    """The rows (images) of a batch whose outputs hold NaN or infinity, each with the names of
    those outputs; empty when every value is finite."""
    rows: NonFinite = {}
    for name, values in outputs.items():
        finite = np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        if not finite.all():
            for row in np.flatnonzero(~finite).tolist():
                rows.setdefault(row, []).append(name)
    return rows


class ImageTimes:
    """Measured compute seconds per image: moving averages for a batch that ran alone and for
    one that ran beside another."""

    def __init__(self) -> None:
        self._seconds = {True: 0.0, False: 0.0}

    def record(self, *, alone: bool, per_image_s: float) -> None:
        previous = self._seconds[alone]
        self._seconds[alone] = (
            per_image_s if not previous else SMOOTHING * per_image_s + (1 - SMOOTHING) * previous
        )

    def per_image(self, *, alone: bool) -> float:
        """Seconds per image of a batch running alone or beside another; the other's figure
        until this one is measured (0 before any)."""
        return self._seconds[alone] or self._seconds[not alone]

    @property
    def slowest(self) -> float:
        """The slower of the two (0 before any): what a batch may take beside another."""
        return max(self._seconds.values())


def start_after(free_in: Sequence[float], work_s: float) -> float:
    """When instances, free after `free_in` seconds each (sorted), have together computed
    `work_s` seconds of queued work, sharing it as each comes free: the moment the next image
    would start."""
    for active in range(1, len(free_in)):
        span = (free_in[active] - free_in[active - 1]) * active  # work done before one more frees
        if work_s <= span:
            return free_in[active - 1] + work_s / active
        work_s -= span
    return free_in[-1] + work_s / len(free_in)


class Stalled(Exception):
    """A job outlived the watchdog given to `InstanceThread.submit`."""


class Displaced(Exception):
    """A job queued behind one that failed or hung, never started: its batch is for the batcher
    to queue again."""


class _Job(Generic[T]):
    """What to run, where its outcome goes (a future of the submitting loop) and its watchdog."""

    def __init__(self, fn: Callable[[], T], future: asyncio.Future[T], timeout_s: float | None):
        self.fn = fn
        self.future = future
        self._timeout_s = timeout_s
        self._watchdog: asyncio.TimerHandle | None = None

    def arm(self) -> None:
        """Start the watchdog: the job is starting (nothing runs ahead of it)."""
        if self._timeout_s is not None and self._watchdog is None and not self.future.done():
            self._watchdog = self.future.get_loop().call_later(self._timeout_s, self._expire)

    def _expire(self) -> None:
        if not self.future.done():
            self.future.set_exception(Stalled())

    def settle(self, result: T | None, error: BaseException | None) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self.future.done():  # given up on meanwhile (the watchdog)
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)  # type: ignore[arg-type]


class InstanceThread(Generic[T]):
    """One daemon thread running one instance's jobs in order, so that the next batch can wait
    on the thread itself and start the moment the one ahead returns. A job that raises halts
    the thread: the jobs queued behind it are displaced (`Displaced`) until `resume`. A hung
    job's thread is abandoned (`abandon` returns at once) and a new one takes its place."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job[T] | None] = queue.SimpleQueue()
        self._order: deque[_Job[T]] = deque()  # submitted and not settled, oldest first
        self._halted = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], T], timeout_s: float | None = None) -> asyncio.Future[T]:
        """Run `fn` on this thread after the jobs submitted before it; its outcome lands in the
        returned future of the calling event loop with one `call_soon_threadsafe` (a concurrent
        future wrapped for the loop cost the loop ~12 us more per batch). Past `timeout_s` from
        its start (as the job ahead of it returns) the future fails with `Stalled` (the run
        itself cannot be interrupted)."""
        job = _Job(fn, asyncio.get_running_loop().create_future(), timeout_s)
        self._order.append(job)
        if len(self._order) == 1:
            job.arm()
        self._jobs.put(job)
        return job.future

    def resume(self) -> None:
        """Run jobs again after one raised."""
        self._halted = False

    def abandon(self) -> None:
        """Leave the thread (stuck in a hung job) for good: the jobs still queued behind it
        fail with `Displaced`, and it ends if its job ever returns."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.settle(None, Displaced())
        self._order.clear()
        self.stop()

    def stop(self) -> None:
        self._jobs.put(None)

    def _settled(self, job: _Job[T], result: T | None, error: BaseException | None) -> None:
        """On the loop: the job's outcome, and the watchdog of the one behind it, now starting."""
        job.settle(result, error)
        if self._order and self._order[0] is job:
            self._order.popleft()
            if self._order:
                self._order[0].arm()

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            result: T | None = None
            error: BaseException | None = None
            if self._halted:
                error = Displaced()
            else:
                try:
                    result = job.fn()
                except BaseException as err:  # noqa: BLE001 - handed to the awaiting batch
                    error = err
                    self._halted = True
            # The loop may have closed while an abandoned (hung) run went on.
            with contextlib.suppress(RuntimeError):
                job.future.get_loop().call_soon_threadsafe(self._settled, job, result, error)


@dataclass(frozen=True)
class Lease:
    """An instance lent to one batch by `InstancePool.claim`; `alone`: the batch may take every
    core (`BatchRunner.run`)."""

    instance: int
    alone: bool


@dataclass(frozen=True)
class Computed:
    """What a batch computed on its instance's thread: the outputs, the rows that are not
    finite, when the run started (`time.perf_counter()`) and its seconds."""

    outputs: Outputs
    nonfinite: NonFinite
    started: float
    seconds: float


class InstancePool:
    """The instances of `runner`, each with its own thread, lent to a batch at a time, and to
    one more waiting behind it (`claim`)."""

    def __init__(
        self,
        runner: BatchRunner,
        *,
        model: str,
        metrics: Metrics,
        batch_timeout_s: float = 0.0,
        on_free: Callable[[], None] = lambda: None,
    ) -> None:
        self.model = model
        self._runner = runner
        self._on_free = on_free
        self._compute_seconds = metrics.compute_duration.labels(model)
        self._timeout_s = batch_timeout_s or None
        self._free = list(range(runner.instances))  # idle and in service
        self._batches = [0] * runner.instances  # batches lent to each: running, and waiting
        self._busy_until: dict[int, float] = {}  # instance -> expected end of its batches
        self._freed = asyncio.Event()
        self._threads = [self._thread(i) for i in range(runner.instances)]
        self._recovering: dict[int, asyncio.Task[None]] = {}
        self.times = ImageTimes()

    def _thread(self, instance: int) -> InstanceThread[Computed | None]:
        return InstanceThread(f"ort-{self.model}-{instance}")

    @property
    def available(self) -> bool:
        """False while every instance is out of service (its session being recreated)."""
        return len(self._recovering) < len(self._threads)

    @property
    def has_free(self) -> bool:
        """An instance is idle: a batch claimed now starts at once."""
        return bool(self._free)

    def _behind(self) -> int | None:
        """The instance in service, running one batch with none waiting behind it, that is
        expected to finish first; None if there is none."""
        running = [
            i for i, count in enumerate(self._batches) if count == 1 and i not in self._recovering
        ]
        return min(running, key=self._busy_until.__getitem__, default=None)

    @property
    def busy(self) -> bool:
        """A batch is running."""
        return bool(self._busy_until)

    async def wait_room(self, *, behind: bool) -> None:
        """Until an instance is idle or, with `behind`, one can take a batch to start the
        moment its running batch returns."""
        while not self._free and not (behind and self._behind() is not None):
            self._freed.clear()
            await self._freed.wait()

    def claim(self, images: int, *, alone: bool) -> Lease:
        """An instance for a batch of `images` (`wait_room` first): an idle one, else one whose
        running batch it waits behind, on the instance's own thread, so that no hand-off
        through the event loop falls between the two (the cores stay busy while the loop is).
        `alone`: nothing else of the model is queued, decoding or running (no batch is `busy`),
        so the batch may take every core; a batch waiting behind another never does."""
        if self._free:
            instance = self._free.pop()
        else:
            behind = self._behind()
            if behind is None:
                raise RuntimeError("claim without room: wait_room first")
            instance, alone = behind, False
        self._batches[instance] += 1
        now = time.monotonic()
        start = max(now, self._busy_until.get(instance, now))
        self._busy_until[instance] = start + images * self.times.per_image(alone=alone)
        return Lease(instance, alone)

    def wait_s(self, ahead: int, count: int, *, alone: bool) -> float:
        """Seconds until `count` images are computed behind `ahead` others, at the measured
        seconds per image: the instances in service start on the images ahead as each finishes
        its lent batches, then the `count` images' own compute follows on the first instance
        to reach them, `alone` or beside others."""
        now = time.monotonic()
        free_in = sorted(
            max(0.0, self._busy_until.get(i, now) - now)
            for i in range(len(self._threads))
            if i not in self._recovering
        )
        ahead_s = ahead * self.times.per_image(alone=False)
        return start_after(free_in or [0.0], ahead_s) + count * self.times.per_image(alone=alone)

    async def run(
        self,
        lease: Lease,
        batch: npt.NDArray[np.float32],
        outputs: Sequence[str],
        *,
        expires: float | None = None,
    ) -> Computed:
        """Run `batch` on the `claim`ed instance's thread, then give the instance back.
        DeadlineExceeded, not run, when the run would start at or after `expires` (a monotonic
        time: the latest deadline among the batch's images). RuntimeFailure or RuntimeStalled
        when the run fails, the instance then out of service until its session is recreated;
        Displaced when the batch waited behind one that failed (never run: queue it again)."""
        instance = lease.instance

        def compute() -> Computed | None:
            if expires is not None and time.monotonic() >= expires:
                return None
            started = time.perf_counter()
            result = self._runner.run(instance, batch, outputs, alone=lease.alone)
            nonfinite = nonfinite_rows(result)  # in the instance's thread, not the loop's
            return Computed(result, nonfinite, started, time.perf_counter() - started)

        thread = self._threads[instance]
        try:
            computed = await thread.submit(compute, self._timeout_s)
        except Displaced:  # never ran: no fault of this instance's session
            raise
        except Stalled:
            message = "%s: batch of %d still running after %.1f s: session abandoned, recreating"
            logger.error(message, self.model, len(batch), self._timeout_s)
            thread.abandon()  # stuck in run(); a new thread replaces it
            self._threads[instance] = self._thread(instance)
            self._recover(instance)
            raise RuntimeStalled(f"{self.model}: inference timed out", model=self.model) from None
        except Exception as err:
            logger.exception(
                "%s: batch of %d failed: recreating its session", self.model, len(batch)
            )
            self._recover(instance)
            raise RuntimeFailure(
                f"{self.model}: inference failed: {err}", model=self.model
            ) from err
        self._release(instance)
        if computed is None:
            raise DeadlineExceeded("deadline passed before compute", model=self.model)
        self._compute_seconds.observe(computed.seconds)
        self.times.record(alone=lease.alone, per_image_s=computed.seconds / len(batch))
        return computed

    def _release(self, instance: int) -> None:
        """A batch of `instance` returned: idle again if none waits behind it, else room for
        another to wait."""
        self._batches[instance] -= 1
        if not self._batches[instance]:
            self._busy_until.pop(instance, None)
            self._free.append(instance)
        self._room_made()

    def _room_made(self) -> None:
        """Wake whatever waits for an instance (`wait_room`, the batcher's worker)."""
        self._freed.set()
        self._on_free()

    def _recover(self, instance: int) -> None:
        """Out of service until its session is recreated; a batch waiting behind the failed
        one comes back `Displaced`."""
        self._batches[instance] = 0
        self._busy_until.pop(instance, None)
        task = asyncio.get_running_loop().create_task(self._recreate(instance))
        self._recovering[instance] = task

    async def _recreate(self, instance: int) -> None:
        """A fresh session for `instance`, retried until it works; then back in service."""
        try:
            while True:
                try:
                    await asyncio.to_thread(self._runner.recreate, instance)
                    break
                except Exception:  # noqa: BLE001 - keep trying: the model stays unavailable
                    logger.exception("%s: recreating session %d failed", self.model, instance)
                    await asyncio.sleep(RECOVERY_RETRY_S)
            logger.info("%s: session %d recreated, back in service", self.model, instance)
            self._threads[instance].resume()
            self._free.append(instance)
            self._room_made()
        finally:
            self._recovering.pop(instance, None)

    async def close(self) -> None:
        """Stop recreating sessions and stop the threads (every batch has returned)."""
        for task in self._recovering.values():
            task.cancel()
        await asyncio.gather(*self._recovering.values(), return_exceptions=True)
        for thread in self._threads:
            thread.stop()
