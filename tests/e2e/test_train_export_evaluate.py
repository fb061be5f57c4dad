"""Train LeNet-5 for a few hundred steps → export → evaluate through ONNX Runtime and PyTorch."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.metadata import ModelMetadata
from tests.conftest import require_fashion_mnist
from training.evaluate import EvalConfig
from training.evaluate import main as evaluate_main
from training.export import ExportConfig
from training.export import main as export_main
from training.train import TrainConfig
from training.train import main as train_main

TRAIN_IMAGES = 6000
BATCH_SIZE = 64
EPOCHS = 3  # 3 × 94 = 282 optimiser steps
EVAL_IMAGES = 2000
CHANCE = 0.1


@pytest.mark.slow
def test_train_export_evaluate(tmp_path: Path) -> None:
    require_fashion_mnist()
    run = train_main(
        TrainConfig(
            arch="lenet5", dataset="fashion-mnist", out=tmp_path / "run", epochs=EPOCHS,
            batch_size=BATCH_SIZE, train_subset=TRAIN_IMAGES, test_subset=EVAL_IMAGES, threads=1,
        )
    )  # fmt: skip
    folder = export_main(
        ExportConfig(checkpoint=run.best_checkpoint, name="lenet5-e2e",
                     repository=tmp_path / "models", threads=1)
    )  # fmt: skip
    meta = ModelMetadata.model_validate_json((folder / "metadata.json").read_text())
    onnx = evaluate_main(EvalConfig(model_dir=folder, limit=EVAL_IMAGES, threads=1))
    torch_ = evaluate_main(EvalConfig(checkpoint=run.best_checkpoint, limit=EVAL_IMAGES))
    assert onnx["runtime"] == "onnxruntime"
    assert onnx["samples"] == torch_["samples"] == EVAL_IMAGES
    assert onnx["accuracy"] > 7 * CHANCE  # well above chance after ~280 steps
    # Same images, same predictions: the confusion matrices agree cell for cell.
    assert onnx["confusion_matrix"] == torch_["confusion_matrix"]
    assert onnx["accuracy"] == pytest.approx(run.best_accuracy, abs=1e-9)  # same 2000 images
    # Export measured the whole test set through ORT and recorded it.
    assert meta.training["test_samples"] == 10000
    assert meta.training["test_accuracy"] == meta.training["test_accuracy_torch"]
