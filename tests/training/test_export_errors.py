"""Export and evaluation of an imagefolder model, and what export refuses (one UserError each)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import torchvision

from service import metadata as schema
from tests.training.conftest import IMAGE_SIDE, write_tree
from training.cli import run_cli
from training.errors import UserError
from training.evaluate import EvalConfig
from training.evaluate import cli as evaluate_cli
from training.evaluate import main as evaluate_main
from training.export import ExportConfig
from training.export import main as export_main
from training.onnx_io import check_feature_map_shapes
from training.train import TrainConfig
from training.train import main as train_main

CLASSES = {"china": 5, "gray": 5}  # the held-out tenth: one test image per class


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tree(tmp_path_factory.mktemp("images") / "imgtree", CLASSES)


@pytest.fixture(scope="module")
def checkpoint(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LeNet-5, one epoch on the 10-image tree at 12x12 grey (a second or two)."""
    cfg = TrainConfig(
        arch="lenet5",
        dataset=f"imagefolder:{tree}",
        out=tmp_path_factory.mktemp("run"),
        epochs=1,
        batch_size=4,
        image_size=IMAGE_SIDE,
        color_mode="L",
        threads=1,
    )
    return train_main(cfg).best_checkpoint


@pytest.fixture
def relative_checkpoint(checkpoint: Path, tmp_path: Path) -> Path:
    """The checkpoint as older runs wrote it: `imagefolder:imgtree`, relative to their cwd."""
    content = torch.load(checkpoint, map_location="cpu", weights_only=True)
    content["dataset"] = "imagefolder:imgtree"
    path = tmp_path / "relative.pt"
    torch.save(content, path)
    return path


def _export(checkpoint: Path, repo: Path, **changes: object) -> Path:
    options: dict[str, object] = {
        "checkpoint": checkpoint,
        "name": "tiny",
        "repository": repo,
        "evaluate": False,
        "feature_maps": "none",
        "threads": 1,
    }
    options.update(changes)
    return export_main(ExportConfig(**options))  # type: ignore[arg-type]


def _metadata(folder: Path) -> schema.ModelMetadata:
    return schema.ModelMetadata.model_validate_json((folder / "metadata.json").read_text())


def test_tiny_tree_takes_parity_samples_from_train_too(checkpoint: Path, tmp_path: Path) -> None:
    folder = _export(checkpoint, tmp_path, evaluate=True)
    meta = _metadata(folder)
    assert meta.export.parity_samples == 10  # type: ignore[attr-defined]  # 2 test + 8 train
    assert meta.labels == ["china", "gray"]
    assert meta.training["test_samples"] == 2


def test_metadata_written_is_valid_for_the_service(checkpoint: Path, tmp_path: Path) -> None:
    folder = _export(checkpoint, tmp_path, max_batch_size=1, feature_maps="features.pool2")
    meta = _metadata(folder)  # raises when export writes what the service refuses
    assert meta.max_batch_size == 1
    assert [(fm.layer, fm.shape) for fm in meta.feature_maps] == [("features.pool2", (16, 1, 1))]


def test_failed_export_leaves_no_new_folders(checkpoint: Path, tmp_path: Path) -> None:
    repo = tmp_path / "new" / "models"
    with pytest.raises(UserError, match="do not output"):
        _export(checkpoint, repo, feature_maps="classifier.fc1")
    assert list(tmp_path.iterdir()) == []
    kept = _export(checkpoint, tmp_path)
    with pytest.raises(UserError, match="do not output"):
        _export(checkpoint, tmp_path, feature_maps="classifier.fc1")
    assert [p.name for p in (tmp_path / "tiny").iterdir()] == ["1"]
    assert (kept / "model.onnx").is_file()


def test_linear_layer_is_not_a_feature_map(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(
        UserError, match=r"classifier\.fc1 \(output \(1, 120\)\).*features\.conv1.*features\.pool2"
    ):
        _export(checkpoint, tmp_path, feature_maps="features.conv1,classifier.fc1")


def test_a_module_that_runs_twice_is_no_feature_map() -> None:
    """torchvision's BasicBlock calls its one ReLU twice: the hook would keep one call's output
    under the module's name (the second, the block's output), so the layer is refused and the
    block named instead; the layers offered in the refusal run once."""
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18().eval()
    sample = torch.randn(2, 3, 64, 64)
    with pytest.raises(
        UserError, match=r"layer1\.0\.relu \(2 times\).*the block around it: layer1\.0"
    ):
        check_feature_map_shapes(resnet, ["layer1.0.relu"], sample)
    with pytest.raises(UserError, match="do not output") as refused:
        check_feature_map_shapes(resnet, ["fc"], sample)
    assert "layer1.0.relu" not in str(refused.value)
    assert "layer1.0," in str(refused.value)
    check_feature_map_shapes(resnet, ["relu", "layer1.0", "layer1.0.conv1"], sample)


def test_max_batch_size_zero_is_refused_by_main(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--max-batch-size"):
        _export(checkpoint, tmp_path, max_batch_size=0)


def test_repository_that_is_a_file(checkpoint: Path, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("keep me\n")
    with pytest.raises(UserError, match="afile is not a directory"):
        _export(checkpoint, afile)
    with pytest.raises(UserError, match="afile is not a directory"):
        _export(checkpoint, afile / "models")
    assert afile.read_text() == "keep me\n"


def test_relative_imagefolder_from_elsewhere_says_how_to_fix(
    relative_checkpoint: Path, tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with pytest.raises(UserError, match=r"tried .*elsewhere/imgtree.*--dataset imagefolder:"):
        _export(relative_checkpoint, tmp_path / "repo")
    with pytest.raises(UserError, match=r"tried .*elsewhere/imgtree"):
        evaluate_main(EvalConfig(checkpoint=relative_checkpoint))
    folder = _export(relative_checkpoint, tmp_path / "repo", dataset=f"imagefolder:{tree}")
    meta = _metadata(folder)
    assert meta.training["dataset"] == "imagefolder:imgtree"
    assert meta.training["evaluation_dataset"] == f"imagefolder:{tree}"
    # evaluate --model-dir reads where export found the data
    assert evaluate_main(EvalConfig(model_dir=folder))["samples"] == 2  # one held out per class
    monkeypatch.chdir(tree.parent)  # from the folder training ran in, the recorded path works
    assert evaluate_main(EvalConfig(checkpoint=relative_checkpoint))["samples"] == 2


def test_labels_that_differ_from_the_models_are_refused(checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(
        UserError, match=r"labels \[0, 1, 2, 3, 4, \.\.\.\] \(10\).*\[china, gray\]"
    ):
        evaluate_main(EvalConfig(checkpoint=checkpoint, dataset="digits"))
    folder = _export(checkpoint, tmp_path)
    with pytest.raises(UserError, match="china, gray"):
        evaluate_main(EvalConfig(model_dir=folder, dataset="digits"))
    with pytest.raises(UserError, match="china, gray"):
        _export(checkpoint, tmp_path, dataset="digits")


def test_corrupt_image_is_one_error_line_exit_2(
    checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad_tree = tmp_path / "bad"
    for name in CLASSES:  # the checkpoint's classes, every image corrupt
        (bad_tree / name).mkdir(parents=True)
        (bad_tree / name / "zzz.jpg").write_text("hello\n")
    caplog.set_level(logging.ERROR)
    rc = run_cli(
        evaluate_cli, ["--checkpoint", str(checkpoint), "--dataset", f"imagefolder:{bad_tree}"]
    )
    assert rc == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "cannot read image" in errors[0].getMessage()
    assert f"{bad_tree}/" in errors[0].getMessage()
    assert "zzz.jpg" in errors[0].getMessage()
