"""Fixtures of the end-to-end tests shared by several modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import require_fashion_mnist
from training.train import TrainConfig
from training.train import main as train_main


@pytest.fixture(scope="session")
def resnet18_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """best.pt of a ResNet-18 (global-average-pool head, so it has a CAM) trained for one epoch
    on 256 real Fashion-MNIST images: trained once for every test that exports it."""
    require_fashion_mnist()
    run = train_main(
        TrainConfig(
            arch="resnet18", dataset="fashion-mnist", out=tmp_path_factory.mktemp("resnet18"),
            epochs=1, batch_size=32, train_subset=256, test_subset=64, threads=2, augment="none",
        )
    )  # fmt: skip
    return run.best_checkpoint
