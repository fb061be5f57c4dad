from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training.errors import UserError
from training.evaluate import EvalConfig
from training.evaluate import main as evaluate_main
from training.metrics import ClassificationReport, confusion_matrix
from training.train import TrainResult


def test_confusion_matrix_and_per_class_accuracy() -> None:
    targets = torch.tensor([0, 0, 1, 1, 2])
    predictions = torch.tensor([0, 1, 1, 1, 0])
    report = ClassificationReport(confusion_matrix(targets, predictions, 3))
    assert report.confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert report.accuracy == pytest.approx(3 / 5)
    assert report.per_class_accuracy() == [0.5, 1.0, 0.0]
    assert "confusion matrix" in report.format_table(["a", "b", "c"])
    # A class with no images has no accuracy, not 0.
    unseen = ClassificationReport(confusion_matrix(targets, predictions, 4))
    assert unseen.per_class_accuracy() == [0.5, 1.0, 0.0, None]
    assert "d  n/a (no images)" in unseen.format_table(["a", "b", "c", "d"])
    assert unseen.to_dict(["a", "b", "c", "d"])["per_class_accuracy"]["d"] is None


def test_evaluate_checkpoint_writes_json(
    tiny_run: TrainResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "report.json"
    result = evaluate_main(EvalConfig(checkpoint=tiny_run.best_checkpoint, limit=200, json_out=out))
    assert json.loads(out.read_text()) == result
    assert result["runtime"] == "pytorch"
    assert result["samples"] == 200
    assert len(result["per_class_accuracy"]) == 10
    assert sum(map(sum, result["confusion_matrix"])) == 200
    assert "per-class accuracy" in capsys.readouterr().out


def test_evaluate_refuses_a_folder_without_a_model(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a model version folder"):
        evaluate_main(EvalConfig(model_dir=tmp_path))


@pytest.mark.parametrize("changes", [{"batch_size": 0}, {"limit": 0}, {"limit": -3}])
def test_main_refuses_counts_below_one(tiny_run: TrainResult, changes: dict[str, int]) -> None:
    with pytest.raises(UserError, match="must be at least 1"):
        evaluate_main(EvalConfig(checkpoint=tiny_run.best_checkpoint, **changes))  # type: ignore[arg-type]


def test_fashion_model_on_digits_is_refused(tiny_run: TrainResult) -> None:
    """10 labels each, but not the same ones: an accuracy would mean nothing."""
    with pytest.raises(UserError, match=r"\[0, 1, 2, 3, 4, \.\.\.\].*\[T-shirt/top, Trouser"):
        evaluate_main(EvalConfig(checkpoint=tiny_run.best_checkpoint, dataset="digits"))
