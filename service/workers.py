"""What the batcher runs (`BatchRunner`: a runtime's instances) and one daemon thread per
instance, running that instance's batches in order.

ONNX Runtime releases the GIL in `run`, so instances compute in parallel; a hung `run` cannot be
interrupted, so its thread is abandoned (`stop` returns at once, the thread never blocks exit)
and a new one takes its place (service/batching.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from service.runtime import Outputs


class BatchRunner(Protocol):
    """What the batcher runs: `runtime.Runtime` in the service."""

    @property
    def instances(self) -> int: ...

    def run(
        self,
        instance: int,
        batch: npt.NDArray[np.float32],
        outputs: Sequence[str],
        solo: bool = False,
    ) -> Outputs: ...

    def recreate(self, instance: int, solo: bool = False) -> None: ...


# What to run, where its outcome goes (a future of the submitting loop) and its watchdog, if any.
Job = tuple[Callable[[], Outputs], "asyncio.Future[Outputs]", asyncio.TimerHandle | None]


class Stalled(Exception):
    """A job outlived the watchdog given to `InstanceThread.submit`."""


def _settle(
    future: asyncio.Future[Outputs],
    watchdog: asyncio.TimerHandle | None,
    result: Outputs | None,
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


def _expire(future: asyncio.Future[Outputs]) -> None:
    if not future.done():
        future.set_exception(Stalled())


class InstanceThread:
    """One daemon thread running one instance's batches in order. A hung batch's thread is
    abandoned (`stop` returns at once) and a new one takes its place."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(
        self, fn: Callable[[], Outputs], timeout_s: float | None = None
    ) -> asyncio.Future[Outputs]:
        """Run `fn` on this thread; its outcome lands in the returned future of the calling
        event loop with one `call_soon_threadsafe` (a concurrent future wrapped for the loop
        cost the loop ~12 us more per batch). Past `timeout_s` the future fails with `Stalled`
        (the run itself cannot be interrupted)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outputs] = loop.create_future()
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
