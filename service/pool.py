"""The model instances of one loaded version, their threads, watchdog, recovery and compute
estimates (docs/service.md, Batching).

`InstancePool` lends one free instance per batch (`claim`) and runs the batch on that
instance's own daemon thread (`run`): ONNX Runtime releases the GIL in `run`, so instances
compute in parallel, never on the event loop. A batch whose `run` raises fails with
`RuntimeFailure` (503); one that outlives the watchdog (`batch_timeout_s`) fails with
`RuntimeStalled` (504), and its thread, stuck in a `run` that cannot be interrupted, is abandoned
(it never blocks exit) for a new one. Either way the instance leaves service while its session
is recreated in the background, retried until it works.

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
from collections.abc import Callable, Sequence
from typing import Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from service.errors import RuntimeFailure, RuntimeStalled
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
# What a batch computed, and the rows among it that are not finite.
Ran = tuple[Outputs, NonFinite]
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


# What to run, where its outcome goes (a future of the submitting loop) and its watchdog, if any.
Job = tuple[Callable[[], T], "asyncio.Future[T]", asyncio.TimerHandle | None]


class Stalled(Exception):
    """A job outlived the watchdog given to `InstanceThread.submit`."""


def _settle(
    future: asyncio.Future[T],
    watchdog: asyncio.TimerHandle | None,
    result: T | None,
    error: BaseException | None,
) -> None:
    if watchdog is not None:
        watchdog.cancel()
    if future.done():  # given up on meanwhile (the watchdog)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)  # type: ignore[arg-type]


def _expire(future: asyncio.Future[T]) -> None:
    if not future.done():
        future.set_exception(Stalled())


class InstanceThread(Generic[T]):
    """One daemon thread running one instance's batches in order. A hung batch's thread is
    abandoned (`stop` returns at once) and a new one takes its place."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Job[T] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], T], timeout_s: float | None = None) -> asyncio.Future[T]:
        """Run `fn` on this thread; its outcome lands in the returned future of the calling
        event loop with one `call_soon_threadsafe` (a concurrent future wrapped for the loop
        cost the loop ~12 us more per batch). Past `timeout_s` the future fails with `Stalled`
        (the run itself cannot be interrupted)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        watchdog = None if timeout_s is None else loop.call_later(timeout_s, _expire, future)
        self._jobs.put((fn, future, watchdog))
        return future

    def stop(self) -> None:
        self._jobs.put(None)

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, future, watchdog = job
            result, error = None, None
            try:
                result = fn()
            except BaseException as err:  # noqa: BLE001 - handed to the awaiting batch
                error = err
            # The loop may have closed while an abandoned (hung) run went on.
            with contextlib.suppress(RuntimeError):
                future.get_loop().call_soon_threadsafe(_settle, future, watchdog, result, error)


class InstancePool:
    """The instances of `runner`, each with its own thread, lent one batch at a time."""

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
        self._free = list(range(runner.instances))
        self._busy_until: dict[int, float] = {}  # instance -> expected end of its batch
        self._alone = [True] * runner.instances  # whether each instance's batch started alone
        self._freed = asyncio.Event()
        self._threads = [self._thread(i) for i in range(runner.instances)]
        self._recovering: dict[int, asyncio.Task[None]] = {}
        self.times = ImageTimes()

    def _thread(self, instance: int) -> InstanceThread[Ran]:
        return InstanceThread(f"ort-{self.model}-{instance}")

    @property
    def available(self) -> bool:
        """False while every instance is out of service (its session being recreated)."""
        return len(self._recovering) < len(self._threads)

    @property
    def has_free(self) -> bool:
        """An instance is free to `claim`."""
        return bool(self._free)

    @property
    def busy(self) -> bool:
        """A batch is running."""
        return bool(self._busy_until)

    async def wait_free(self) -> None:
        """Until an instance is free to `claim`."""
        while not self._free:
            self._freed.clear()
            await self._freed.wait()

    def claim(self, images: int, *, alone: bool) -> int:
        """A free instance for a batch of `images` (one must be free: `wait_free`), busy until
        `run` returns; `alone`: nothing else of the model is queued, decoding or running (no
        batch is `busy`), so the batch may take every core (`BatchRunner.run`)."""
        instance = self._free.pop()
        self._alone[instance] = alone
        self._busy_until[instance] = time.monotonic() + images * self.times.per_image(alone=alone)
        return instance

    def wait_s(self, ahead: int, count: int, *, alone: bool) -> float:
        """Seconds until `count` images are computed behind `ahead` others, at the measured
        seconds per image: the instances in service start on the images ahead as each finishes
        its running batch, then the `count` images' own compute follows on the first instance
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
        self, instance: int, batch: npt.NDArray[np.float32], outputs: Sequence[str], started: float
    ) -> tuple[Outputs, NonFinite, float]:
        """Run `batch` on the `claim`ed `instance`'s thread, then free the instance; its compute
        seconds count from `started` (a `time.perf_counter()` value). Returns the outputs, the
        rows that are not finite and the compute seconds. RuntimeFailure or
        RuntimeStalled when the run fails, the instance then out of service until its session
        is recreated."""

        def compute() -> Ran:
            result = self._runner.run(instance, batch, outputs, alone=self._alone[instance])
            return result, nonfinite_rows(result)  # in the instance's thread, not the loop's

        try:
            result, nonfinite = await self._threads[instance].submit(compute, self._timeout_s)
        except Stalled:
            message = "%s: batch of %d still running after %.1f s: session abandoned, recreating"
            logger.error(message, self.model, len(batch), self._timeout_s)
            self._threads[instance].stop()  # its thread is stuck in run(); a new one replaces it
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
        compute_s = time.perf_counter() - started
        self._compute_seconds.observe(compute_s)
        self.times.record(alone=self._alone[instance], per_image_s=compute_s / len(batch))
        return result, nonfinite, compute_s

    def _release(self, instance: int) -> None:
        self._busy_until.pop(instance, None)
        self._free.append(instance)
        self._freed.set()
        self._on_free()

    def _recover(self, instance: int) -> None:
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
            self._release(instance)
        finally:
            self._recovering.pop(instance, None)

    async def close(self) -> None:
        """Stop recreating sessions and stop the threads (every batch has returned)."""
        for task in self._recovering.values():
            task.cancel()
        await asyncio.gather(*self._recovering.values(), return_exceptions=True)
        for thread in self._threads:
            thread.stop()
