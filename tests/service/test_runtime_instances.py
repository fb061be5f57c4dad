"""How many instances a version keeps: the setting, or where it is left to the service (0), one
for a model whose batch of one computes in under runtime.ONE_INSTANCE_BELOW_S (the event loop
then is the limit, and a second instance would only split the waiting images into smaller
batches)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.manager import ModelManager
from service.metrics import Metrics
from service.settings import DEFAULT_INSTANCES, Settings
from tests.service.fakes import images, spins, tiny_runtime
from tests.service.tiny_model import TinyModel, write_tiny_model

pytestmark = [pytest.mark.timeout(60)]


def test_a_model_computing_under_the_bound_keeps_one_instance(
    tiny_repo: Path, tiny_cnn: TinyModel
) -> None:
    runtime = tiny_runtime(tiny_repo, tiny_cnn, instances=2, one_instance_below_s=60.0)
    assert runtime.instances == 2
    runtime.warm_up()
    assert runtime.instances == 1
    batch = np.stack(images(3))
    kept = runtime.run(0, batch, ["logits"])
    reference = tiny_runtime(tiny_repo, tiny_cnn).run(0, batch, ["logits"])
    np.testing.assert_array_equal(kept["logits"], reference["logits"])
    # Made to run beside another: it stays so when replaced (no spinning threads of a session
    # sized for two).
    runtime.recreate(0)
    assert runtime.instances == 1
    assert spins(runtime.sessions[0]) == "0"


@pytest.mark.parametrize("bound_s", [0.0, 1e-9], ids=["set", "slower-than-bound"])
def test_instances_stay_when_set_or_slower_than_the_bound(
    tiny_repo: Path, tiny_cnn: TinyModel, bound_s: float
) -> None:
    runtime = tiny_runtime(tiny_repo, tiny_cnn, instances=2, one_instance_below_s=bound_s)
    runtime.warm_up()
    assert runtime.instances == 2
    batch = np.stack(images(2))
    np.testing.assert_array_equal(
        runtime.run(1, batch, ["logits"])["logits"], runtime.run(0, batch, ["logits"])["logits"]
    )


@pytest.mark.anyio
@pytest.mark.parametrize(("instances", "kept"), [(0, 1), (2, 2), (3, 3)])
async def test_the_setting_left_at_zero_lets_a_tiny_model_keep_one(
    tmp_path: Path, instances: int, kept: int
) -> None:
    """The tiny CNN computes a batch of one in microseconds: with the default setting it keeps
    one instance; a count that is set is kept whatever the model."""
    repo = tmp_path / "models"
    write_tiny_model(repo, "tiny-cnn")
    settings = Settings(model_repository=repo, providers="cpu", instances=instances)
    assert settings.effective_instances == (instances or DEFAULT_INSTANCES)
    manager = ModelManager(settings, Metrics(gpu=False))
    await manager.sync()
    try:
        assert manager.get("tiny-cnn").runtime.instances == kept
    finally:
        await manager.close()
