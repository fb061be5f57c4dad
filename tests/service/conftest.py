"""Service test fixtures: a tiny real model repository, built once per session without torch."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.runtime import Runtime
from tests.service.fakes import tiny_runtime
from tests.service.tiny_model import TinyModel, write_tiny_model


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """models/ with tiny-cnn/1 (greyscale, GAP head with CAM) and tiny-rgb/1 (RGB, no CAM)."""
    root = tmp_path_factory.mktemp("models")
    write_tiny_model(root, "tiny-cnn", color_mode="L", gap_head=True, seed=0)
    write_tiny_model(root, "tiny-rgb", color_mode="RGB", gap_head=False, seed=1)
    return root


@pytest.fixture(scope="session")
def tiny_cnn(tiny_repo: Path) -> TinyModel:
    from service.metadata import ModelMetadata

    folder = tiny_repo / "tiny-cnn" / "1"
    metadata = ModelMetadata.model_validate_json((folder / "metadata.json").read_text())
    return TinyModel("tiny-cnn", 1, folder, metadata)


@pytest.fixture(scope="module")
def runtime(tiny_repo: Path, tiny_cnn: TinyModel) -> Runtime:
    """A real CPU Runtime of the tiny CNN, one one-thread instance: shared by a module's tests."""
    return tiny_runtime(tiny_repo, tiny_cnn)
