"""Fixtures and helpers shared by every test package."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_system_part(available: bool, what: str, how: str) -> None:
    """Skip a test whose system part is missing locally; fail it in CI (README).

    `what` names the part, `how` says how to install it (e.g. "apt-get install -y chromium").
    """
    if available:
        return
    message = f"{what} is missing: {how}"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def require_fashion_mnist() -> Path:
    """Debian's Fashion-MNIST folder (train and test files), or skip/fail as
    `require_system_part` does."""
    from training.data.idx import DEBIAN_FASHION_MNIST_DIR

    available = all(
        (DEBIAN_FASHION_MNIST_DIR / f"{split}-images-idx3-ubyte.gz").is_file()
        for split in ("train", "t10k")
    )
    require_system_part(available, "Fashion-MNIST", "apt-get install -y dataset-fashion-mnist")
    return DEBIAN_FASHION_MNIST_DIR


def require_executable(name: str, package: str) -> str:
    """Path of an executable from a Debian package, or skip/fail as `require_system_part` does."""
    path = shutil.which(name)
    require_system_part(path is not None, name, f"apt-get install -y {package}")
    assert path is not None
    return path
