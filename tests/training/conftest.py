"""Fixtures of the training tests: real Fashion-MNIST, a tiny trained LeNet-5 checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import require_fashion_mnist
from training.data.transforms import Preprocessing, eval_transform
from training.train import TrainConfig, TrainResult
from training.train import main as train_main

# Two engineers share the machine's two cores with this suite.
torch.set_num_threads(1)
TINY_TRAIN = 1024
TINY_TEST = 256


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    return require_fashion_mnist()


def fashion_samples(pre: Preprocessing, count: int) -> torch.Tensor:
    """`count` real Fashion-MNIST test images through the eval pipeline of `pre`."""
    from PIL import Image

    from training.data.idx import load_fashion_mnist

    images, _ = load_fashion_mnist(train=False)
    transform = eval_transform(pre)
    return torch.stack([transform(Image.fromarray(img)) for img in images[:count]])


def tiny_config(out: Path, **changes: object) -> TrainConfig:
    options: dict[str, object] = {
        "arch": "lenet5",
        "dataset": "fashion-mnist",
        "out": out,
        "epochs": 1,
        "batch_size": 64,
        "train_subset": TINY_TRAIN,
        "test_subset": TINY_TEST,
        "threads": 1,
    }
    options.update(changes)
    return TrainConfig(**options)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def tiny_run(fashion_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """One epoch of LeNet-5 on 1024 Fashion-MNIST images (about two seconds)."""
    return train_main(tiny_config(tmp_path_factory.mktemp("tiny-run")))


# Small image trees (class-per-folder PNGs) for the imagefolder tests.
IMAGE_SIDE = 12


def write_tree(root: Path, classes: dict[str, int], seed: int = 0) -> Path:
    """`count` random RGB PNGs per class folder; each class has its own mean grey level."""
    rng = np.random.default_rng(seed)
    for level, (name, count) in enumerate(sorted(classes.items())):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 32, (IMAGE_SIDE, IMAGE_SIDE, 3)) + 64 * level
            Image.fromarray(pixels.astype(np.uint8)).save(root / name / f"{i}.png")
    return root
