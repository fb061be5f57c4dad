"""The export CLI: what it writes, and what it refuses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service import metadata as schema
from tests.conftest import REPO_ROOT
from training.errors import UserError
from training.export import ExportConfig, resolve_layers, stage_and_publish
from training.export import main as export_main
from training.registry import build_model, get_spec
from training.train import TrainResult


def _export(run: TrainResult, repo: Path, **changes: object) -> Path:
    options: dict[str, object] = {
        "checkpoint": run.best_checkpoint,
        "name": "tiny",
        "repository": repo,
        "evaluate": False,
        "parity_samples": 4,
    }
    options.update(changes)
    return export_main(ExportConfig(**options))  # type: ignore[arg-type]


@pytest.mark.slow
def test_export_writes_a_valid_version(tiny_run: TrainResult, tmp_path: Path) -> None:
    folder = _export(tiny_run, tmp_path)
    assert folder == tmp_path / "tiny" / "1"
    assert folder.stat().st_mode & 0o777 == 0o755
    meta = schema.ModelMetadata.model_validate_json((folder / "metadata.json").read_text())
    assert meta.architecture == "lenet5"
    assert meta.input.color_mode == "L"
    assert meta.preprocessing.resize == meta.preprocessing.center_crop == 28
    assert meta.feature_maps[0].output == "fm.features.conv1"
    assert meta.feature_maps[0].shape == (6, 28, 28)
    assert meta.filters[0].shape == (6, 1, 5, 5)
    assert (folder / "filters" / "features.conv1.png").is_file()
    assert meta.cam is None  # LeNet-5's head is not GAP + linear
    assert meta.training["dataset"] == "fashion-mnist"
    assert meta.training["epochs"] == 1
    import hashlib

    assert meta.export.sha256 == hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()
    assert sorted(p.name for p in (tmp_path / "tiny").iterdir()) == ["1"]  # no staging left


@pytest.mark.slow
def test_versions_increment_and_are_never_overwritten(
    tiny_run: TrainResult, tmp_path: Path
) -> None:
    _export(tiny_run, tmp_path, feature_maps="none")
    assert _export(tiny_run, tmp_path, feature_maps="none").name == "2"
    before = (tmp_path / "tiny" / "1" / "model.onnx").read_bytes()
    with pytest.raises(UserError, match="already exists"):
        _export(tiny_run, tmp_path, version=1, feature_maps="features.pool2")
    assert (tmp_path / "tiny" / "1" / "model.onnx").read_bytes() == before
    forced = _export(tiny_run, tmp_path, version=1, feature_maps="features.pool2", force=True)
    meta = schema.ModelMetadata.model_validate_json((forced / "metadata.json").read_text())
    assert [fm.layer for fm in meta.feature_maps] == ["features.pool2"]


@pytest.mark.parametrize("name", ["Bad", "../escape", "", "-x", "a" * 65, "a/b"])
def test_bad_names_are_refused(tiny_run: TrainResult, tmp_path: Path, name: str) -> None:
    with pytest.raises(UserError, match="bad model name"):
        _export(tiny_run, tmp_path, name=name)
    assert not any(tmp_path.iterdir())


def test_unknown_feature_map_layer_is_refused(tiny_run: TrainResult, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"unknown layer.*features\.conv9.*features\.conv1"):
        _export(tiny_run, tmp_path, feature_maps="features.conv9")


@pytest.mark.slow
def test_parity_failure_writes_nothing(tiny_run: TrainResult, tmp_path: Path) -> None:
    """A real float32 reordering error (~1e-7) against a tolerance of 1e-12 must refuse."""
    from dataclasses import replace

    from tests.training.conftest import fashion_samples
    from training.checkpoint import load_checkpoint, model_from_checkpoint, preprocessing_of
    from training.export import ExportSpec

    content = load_checkpoint(tiny_run.best_checkpoint)
    model = model_from_checkpoint(content)
    pre = preprocessing_of(content)
    spec = ExportSpec(
        "strict",
        1,
        "lenet5",
        list(content["labels"]),
        pre,
        ["features.conv2", "features.pool2"],
        tolerance=1e-12,
    )
    with pytest.raises(UserError, match=r"parity check failed.*logits"):
        stage_and_publish(model, spec, fashion_samples(pre, 8), tmp_path, force=False)
    assert not (tmp_path / "strict").exists()  # nor the model folder this export created
    loose = stage_and_publish(
        model, replace(spec, tolerance=1e-4), fashion_samples(pre, 8), tmp_path, force=False
    )
    assert (loose / "model.onnx").is_file()


@pytest.mark.slow
def test_cli_user_errors_exit_2(tiny_run: TrainResult, tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "training.export",
        "--checkpoint",
        str(tiny_run.best_checkpoint),
        "--repository",
        str(tmp_path),
        "--name",
        "Bad Name",
    ]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT, check=False)
    assert result.returncode == 2
    assert "bad model name" in result.stderr
    assert "Traceback" not in result.stderr
    missing = [
        sys.executable,
        "-m",
        "training.export",
        "--checkpoint",
        str(tmp_path / "no.pt"),
        "--name",
        "x",
        "--repository",
        str(tmp_path),
    ]
    result = subprocess.run(missing, capture_output=True, text=True, cwd=REPO_ROOT, check=False)
    assert result.returncode == 2
    assert "does not exist" in result.stderr


def test_every_layer_choice_but_none_keeps_the_cam(caplog: pytest.LogCaptureFixture) -> None:
    """`all` adds the conv and pool layers to the default blocks (the CAM's among them); a
    list without the CAM's layer gets it, with a line; `none` is logits only."""
    model = build_model("resnet18", 10, 3, 224)
    defaults = get_spec("resnet18").feature_layers(model)
    everything = resolve_layers(model, "resnet18", "all")
    assert set(defaults) <= set(everything)
    assert {"conv1", "maxpool", "layer4.1.conv2"} <= set(everything)
    with caplog.at_level("INFO"):
        assert resolve_layers(model, "resnet18", "layer1") == ["layer1", "layer4"]
    assert "feature map layer4 added: the CAM is computed on it" in caplog.text
    assert resolve_layers(model, "resnet18", "none") == []
