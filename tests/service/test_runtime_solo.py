"""The solo session: a batch that starts while no other runs gets every core (runtime.Runtime),
batches side by side run on the instances' own narrower sessions."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from service import runtime as runtime_module
from service.runtime import Runtime
from tests.service.fakes import (
    GatedRuntime,
    images,
    make,
    tiny_runtime,
    wait_started,
)
from tests.service.tiny_model import TinyModel

pytestmark = [pytest.mark.timeout(60)]


def build(tiny_repo: Path, tiny_cnn: TinyModel) -> Runtime:
    return tiny_runtime(tiny_repo, tiny_cnn, instances=2, solo_threads=2)


@pytest.fixture
def solo_runtime(tiny_repo: Path, tiny_cnn: TinyModel, monkeypatch: pytest.MonkeyPatch) -> Runtime:
    """Kept whatever the timing (the tiny model gains nothing from a second thread)."""
    monkeypatch.setattr(runtime_module, "SOLO_GAIN", float("inf"))
    runtime = build(tiny_repo, tiny_cnn)
    runtime.warm_up()
    assert runtime.solo is not None
    return runtime


def test_solo_session_answers_as_the_instances_do(solo_runtime: Runtime) -> None:
    batch = np.stack(images(3))
    own = solo_runtime.run(0, batch, ["logits"])
    alone = solo_runtime.run(0, batch, ["logits"], solo=True)
    np.testing.assert_allclose(alone["logits"], own["logits"], rtol=1e-5, atol=1e-6)


def spins(session: object) -> str:
    options = session.get_session_options()  # type: ignore[attr-defined]
    return str(options.get_session_config_entry("session.intra_op.allow_spinning"))


def test_only_sessions_that_run_alone_spin(
    solo_runtime: Runtime, tiny_repo: Path, tiny_cnn: TinyModel
) -> None:
    """Spinning within a run, never after it (`session.force_spinning_stop`), and only where no
    other session runs beside: the solo session and a lone instance, not side-by-side ones."""
    assert [spins(s) for s in solo_runtime.sessions] == ["0", "0"]
    assert spins(solo_runtime.solo) == "1"
    solo_runtime.recreate(0, solo=True)
    solo_runtime.recreate(1)
    assert spins(solo_runtime.solo) == "1"
    assert spins(solo_runtime.sessions[1]) == "0"
    lone = tiny_runtime(tiny_repo, tiny_cnn, instances=1)
    assert spins(lone.sessions[0]) == "1"
    for session in (*solo_runtime.sessions, solo_runtime.solo, lone.sessions[0]):
        options = session.get_session_options()  # type: ignore[union-attr]
        assert options.get_session_config_entry("session.force_spinning_stop") == "1"


def test_solo_session_is_dropped_where_it_is_not_faster(
    tiny_repo: Path, tiny_cnn: TinyModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime_module, "SOLO_GAIN", 0.0)  # no session is infinitely faster
    runtime = build(tiny_repo, tiny_cnn)
    runtime.warm_up()
    assert runtime.solo is None
    batch = np.stack(images(2))
    assert runtime.run(1, batch, ["logits"], solo=True)["logits"].shape[0] == 2  # own session


def test_a_slow_start_of_the_timing_does_not_pick_the_solo_session(
    tiny_repo: Path, tiny_cnn: TinyModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first three timed runs are slowed (as the decoders' warm-up or another model loading
    slows them at startup): timed one session after the other, that fell on the instance's own
    session alone and kept a solo session that the tiny model gains nothing from; timed in
    turn, the disturbance hits both and the faster runs decide."""
    runtime = build(tiny_repo, tiny_cnn)
    real_run = runtime._run
    timed: list[object] = []

    def disturbed(session: object, batch: np.ndarray, outputs: list[str]) -> object:
        if batch.shape[0] == 1:  # the timing runs (the output checks run batches of two)
            timed.append(session)
            if len(timed) <= 3:
                time.sleep(0.002)
        return real_run(session, batch, outputs)  # type: ignore[arg-type]

    monkeypatch.setattr(runtime, "_run", disturbed)
    runtime.warm_up()
    assert runtime.solo is None
    assert timed[:4] == [runtime.sessions[0], timed[1], runtime.sessions[0], timed[1]]
    assert timed[1] is not runtime.sessions[0]
    assert len(timed) >= 2 * runtime_module.SOLO_TRIALS


def test_recreate_replaces_the_session_that_ran(solo_runtime: Runtime) -> None:
    own, solo = list(solo_runtime.sessions), solo_runtime.solo
    solo_runtime.recreate(1, solo=True)
    assert solo_runtime.solo is not None
    assert solo_runtime.solo is not solo
    assert solo_runtime.sessions == own
    solo_runtime.recreate(1)
    assert solo_runtime.sessions[0] is own[0]
    assert solo_runtime.sessions[1] is not own[1]


def test_without_solo_threads_there_is_no_solo_session(
    tiny_repo: Path, tiny_cnn: TinyModel
) -> None:
    assert tiny_runtime(tiny_repo, tiny_cnn, intra_op_threads=2).solo is None


@pytest.mark.anyio
async def test_batcher_runs_a_lone_batch_solo_and_side_by_side_ones_not(
    solo_runtime: Runtime,
) -> None:
    gated = GatedRuntime(solo_runtime)
    batcher = make(gated, max_batch_size=1)
    gated.gate.clear()
    (first,) = batcher.submit(images(1), frozenset(), None)
    await wait_started(gated)
    gated.started.clear()
    (second,) = batcher.submit(images(1, start=1), frozenset(), None)
    await wait_started(gated)  # on the other instance, beside the first
    gated.gate.set()
    await asyncio.gather(first.future, second.future)
    (third,) = batcher.submit(images(1, start=2), frozenset(), None)
    await third.future
    assert gated.solos == [True, False, True]
    await batcher.close()
