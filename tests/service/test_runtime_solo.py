"""The solo session: a batch that starts while no other runs and no other work waits gets every
core (runtime.Runtime), other batches run on the instances' own narrower sessions."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from service import runtime as runtime_module
from service.faults import FaultInjector
from service.runtime import Runtime
from tests.service.fakes import images, spins, tiny_runtime
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


def test_solo_session_answers_as_the_instances_do(
    solo_runtime: Runtime, tiny_repo: Path, tiny_cnn: TinyModel
) -> None:
    batch = np.stack(images(3))
    alone = solo_runtime.run(0, batch, ["logits"])  # nothing else runs: the solo session
    own = tiny_runtime(tiny_repo, tiny_cnn, instances=2).run(0, batch, ["logits"])
    np.testing.assert_allclose(alone["logits"], own["logits"], rtol=1e-5, atol=1e-6)


def test_only_sessions_that_run_alone_spin(
    solo_runtime: Runtime, tiny_repo: Path, tiny_cnn: TinyModel
) -> None:
    """Spinning within a run, never after it (`session.force_spinning_stop`), and only where no
    other session runs beside: the solo session and a lone instance, not side-by-side ones."""
    assert [spins(s) for s in solo_runtime.sessions] == ["0", "0"]
    assert spins(solo_runtime.solo) == "1"
    solo_runtime.run(0, np.stack(images(1)), ["logits"])  # alone: on the solo session
    solo_runtime.recreate(0)
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
    assert runtime.run(1, batch, ["logits"])["logits"].shape[0] == 2  # on its own session


def test_recreate_replaces_the_session_that_ran(solo_runtime: Runtime) -> None:
    """A lone batch runs on the solo session, so recreating its instance replaces that one;
    an instance that has not run keeps the solo session and gets its own replaced."""
    own, solo = list(solo_runtime.sessions), solo_runtime.solo
    solo_runtime.run(1, np.stack(images(1)), ["logits"])
    solo_runtime.recreate(1)
    assert solo_runtime.solo is not None
    assert solo_runtime.solo is not solo
    assert solo_runtime.sessions == own
    solo = solo_runtime.solo
    solo_runtime.recreate(0)
    assert solo_runtime.solo is solo
    assert solo_runtime.sessions[0] is not own[0]
    assert solo_runtime.sessions[1] is own[1]


def test_a_batch_not_alone_runs_on_its_own_session(solo_runtime: Runtime) -> None:
    """Nothing else runs, but the caller has other work waiting (`alone=False`): the batch runs
    on its instance's own session, so recreating the instance replaces that one."""
    own, solo = list(solo_runtime.sessions), solo_runtime.solo
    solo_runtime.run(1, np.stack(images(1)), ["logits"], alone=False)
    solo_runtime.recreate(1)
    assert solo_runtime.solo is solo
    assert solo_runtime.sessions[1] is not own[1]


def test_a_batch_beside_a_running_one_runs_on_its_own_session(
    tiny_repo: Path, tiny_cnn: TinyModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first batch hangs (an injected stall) on the solo session; a second, started beside
    it, runs on its instance's own session: recreating that instance replaces its own session,
    and the solo session stays."""
    monkeypatch.setattr(runtime_module, "SOLO_GAIN", float("inf"))
    faults = FaultInjector("stall", 1, stall_s=5.0)
    runtime = tiny_runtime(tiny_repo, tiny_cnn, instances=2, solo_threads=2)
    runtime.warm_up()
    runtime.faults = faults
    own, solo = list(runtime.sessions), runtime.solo
    batch = np.stack(images(1))
    hung = threading.Thread(target=runtime.run, args=(0, batch, ["logits"]), daemon=True)
    hung.start()
    while faults.remaining:  # until the first batch is running, stalled
        hung.join(0.001)
    runtime.run(1, batch, ["logits"])
    runtime.recreate(1)
    assert runtime.solo is solo
    assert runtime.sessions[0] is own[0]
    assert runtime.sessions[1] is not own[1]
    hung.join()


def test_without_solo_threads_there_is_no_solo_session(
    tiny_repo: Path, tiny_cnn: TinyModel
) -> None:
    assert tiny_runtime(tiny_repo, tiny_cnn, intra_op_threads=2).solo is None
