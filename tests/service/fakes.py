"""The one fake of the service tests, a real Runtime whose batches wait at a gate, and the tiny
batchers built on it.

Holding a batch busy for as long as a test needs is the only way to make a queue, a full
queue or a busy instance deterministic; everything behind the gate is real ONNX Runtime.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from service.batching import Batcher, Item, Reservation
from service.metrics import Metrics
from service.repository import VersionRef, load_version
from service.runtime import Outputs, Runtime
from tests.service.tiny_model import TinyModel

GATE_TIMEOUT_S = 30.0  # a batch held longer than this fails: a test that forgot to open it


class GatedRuntime:
    """Batches wait for `gate` to open (it starts open), then run on real ORT. Records each
    batch's size and outputs (`calls`), its input and whether it was to run `alone`, and sets
    `started` as one reaches the gate.

    Built on one Runtime, it stands in for it (a Batcher's runtime); built by
    `gate_every_runtime`, every Runtime's batches pass it (a whole server's)."""

    def __init__(self, runtime: Runtime | None = None) -> None:
        self._runtime = runtime
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.calls: list[tuple[int, tuple[str, ...]]] = []
        self.inputs: list[npt.NDArray[np.float32]] = []
        self.alone: list[bool] = []
        self.submitted = 0  # rows submitted to any Batcher, under gate_every_runtime

    @property
    def runtime(self) -> Runtime:
        assert self._runtime is not None, "gating every Runtime: there is not one to stand in for"
        return self._runtime

    @property
    def instances(self) -> int:
        return self.runtime.instances

    @property
    def sizes(self) -> list[int]:
        """The size of every batch that reached the gate, in order."""
        return [size for size, _ in self.calls]

    def hold(self) -> None:
        """Close the gate and forget what passed it so far."""
        self.calls.clear()
        self.inputs.clear()
        self.alone.clear()
        self.submitted = 0
        self.started.clear()
        self.gate.clear()

    def run(
        self,
        instance: int,
        batch: npt.NDArray[np.float32],
        outputs: Sequence[str],
        *,
        alone: bool = True,
    ) -> Outputs:
        return self.through(
            lambda: self.runtime.run(instance, batch, outputs, alone=alone), batch, outputs, alone
        )

    def recreate(self, instance: int) -> None:
        self.runtime.recreate(instance)

    def through(
        self,
        run: Callable[[], Outputs],
        batch: npt.NDArray[np.float32],
        outputs: Sequence[str],
        alone: bool,
    ) -> Outputs:
        """Record the batch, wait at the gate, then `run` it."""
        self.calls.append((len(batch), tuple(outputs)))
        self.inputs.append(batch.copy())
        self.alone.append(alone)
        self.started.set()
        if not self.gate.wait(GATE_TIMEOUT_S):
            raise TimeoutError("the gate was never opened")
        return run()


def gate_every_runtime(monkeypatch: pytest.MonkeyPatch) -> GatedRuntime:
    """Make every Runtime's batches pass one gate (a server's, built on its own), and count the
    rows submitted to any Batcher."""
    gated = GatedRuntime()
    run = Runtime.run
    submit = Batcher.submit

    def gated_run(
        runtime: Runtime,
        instance: int,
        batch: npt.NDArray[np.float32],
        outputs: Sequence[str],
        *,
        alone: bool = True,
    ) -> Outputs:
        return gated.through(
            lambda: run(runtime, instance, batch, outputs, alone=alone), batch, outputs, alone
        )

    def counted_submit(
        batcher: Batcher,
        tensors: Sequence[npt.NDArray[np.float32]],
        outputs: frozenset[str],
        deadline: float | None,
        reservation: Reservation | None = None,
    ) -> list[Item]:
        items = submit(batcher, tensors, outputs, deadline, reservation)
        gated.submitted += len(items)
        return items

    monkeypatch.setattr(Runtime, "run", gated_run)
    monkeypatch.setattr(Batcher, "submit", counted_submit)
    return gated


async def wait_started(gated: GatedRuntime) -> None:
    """Until a batch has reached the gate (the test's timeout bounds the wait)."""
    while not gated.started.is_set():
        await asyncio.sleep(0.001)


def tiny_runtime(tiny_repo: Path, tiny_cnn: TinyModel, **layout: float) -> Runtime:
    """A real CPU Runtime of the tiny CNN: one one-thread instance unless `layout` says more."""
    files = load_version(tiny_repo, VersionRef("tiny-cnn", 1, tiny_cnn.path))
    options = {"instances": 1, "intra_op_threads": 1, **layout}
    return Runtime(files.onnx_bytes, files.metadata, providers=["CPUExecutionProvider"], **options)


def spins(session: object) -> str:
    """Whether `session`'s intra-op threads spin between a run's operators ("1") or sleep."""
    options = session.get_session_options()  # type: ignore[attr-defined]
    return str(options.get_session_config_entry("session.intra_op.allow_spinning"))


def images(count: int, start: int = 0) -> list[npt.NDArray[np.float32]]:
    """`count` tiny-CNN inputs, each filled with its own number from `start` on."""
    return [np.full((1, 16, 16), float(start + i), dtype=np.float32) for i in range(count)]


def make(gated: GatedRuntime, **kwargs: float) -> Batcher:
    """A Batcher of the tiny CNN on `gated`: batches of 8, no queue delay, a queue of 64."""
    options: dict[str, float] = {
        "max_batch_size": 8,
        "max_queue_delay_s": 0.0,
        "max_queue_size": 64,
    }
    options.update(kwargs)
    return Batcher(
        gated,
        model="tiny-cnn",
        required_outputs=["logits"],
        max_batch_size=int(options["max_batch_size"]),
        max_queue_delay_s=options["max_queue_delay_s"],
        max_queue_size=int(options["max_queue_size"]),
        metrics=Metrics(gpu=False),
        max_batch_compute_s=options.get("max_batch_compute_s", 0.0),
    )
