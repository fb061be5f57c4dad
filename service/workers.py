"""What the batcher runs (`BatchRunner`: a runtime's instances) and one daemon thread per
instance, running that instance's batches in order.

ONNX Runtime releases the GIL in `run`, so instances compute in parallel; a hung `run` cannot be
interrupted, so its thread is abandoned (`stop` returns at once, the thread never blocks exit)
and a new one takes its place (service/batching.py).
"""

from __future__ import annotations

import concurrent.futures
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


Job = tuple[Callable[[], Outputs], "concurrent.futures.Future[Outputs]"]


class InstanceThread:
    """One daemon thread running one instance's batches in order. A hung batch's thread is
    abandoned (`stop` returns at once) and a new one takes its place."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], Outputs]) -> concurrent.futures.Future[Outputs]:
        future: concurrent.futures.Future[Outputs] = concurrent.futures.Future()
        self._jobs.put((fn, future))
        return future

    def stop(self) -> None:
        self._jobs.put(None)

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, future = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as err:  # noqa: BLE001 - handed to the awaiting batch
                future.set_exception(err)
