from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO_ROOT
from tests.training.conftest import tiny_config
from training.checkpoint import load_checkpoint
from training.cli import run_cli
from training.train import METRICS_FILE, TrainResult
from training.train import cli as train_cli
from training.train import main as train_main

# What docs/training.md (Training) says a checkpoint holds.
CHECKPOINT_KEYS = {
    "arch", "arch_kwargs", "labels", "preprocessing", "optimizer", "scheduler", "epoch",
    "best_metric", "rng", "torch_version", "model",
}  # fmt: skip


def _metrics(out: Path) -> list[dict[str, object]]:
    rows = [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]
    for row in rows:
        row.pop("time_s")
    return rows


def test_checkpoint_carries_the_documented_fields(tiny_run: TrainResult) -> None:
    content = torch.load(tiny_run.last_checkpoint, weights_only=True)
    assert set(content) >= CHECKPOINT_KEYS
    assert content["preprocessing"]["mean"] == [0.286]
    assert len(content["labels"]) == 10
    assert tiny_run.best_checkpoint.is_file()
    assert 0.5 < tiny_run.best_accuracy <= 1.0  # well above chance after 16 steps


@pytest.mark.slow
def test_resume_is_exact(fashion_dir: Path, tmp_path: Path) -> None:
    options = {
        "epochs": 2,
        "train_subset": 512,
        "test_subset": 128,
        "label_smoothing": 0.1,
        "augment": "flip-crop-erase",
        "schedule": "cosine",
    }
    straight = train_main(tiny_config(tmp_path / "straight", **options))
    train_main(tiny_config(tmp_path / "split", stop_after=1, **options))
    assert load_checkpoint(tmp_path / "split" / "last.pt")["epoch"] == 1
    resumed = train_main(
        tiny_config(tmp_path / "split", resume=tmp_path / "split" / "last.pt", **options)
    )
    a = load_checkpoint(straight.last_checkpoint)
    b = load_checkpoint(resumed.last_checkpoint)
    assert a["epoch"] == b["epoch"] == 2
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    assert _metrics(tmp_path / "straight") == _metrics(tmp_path / "split")
    assert len(_metrics(tmp_path / "split")) == 2


def test_resume_refuses_other_arch(tiny_run: TrainResult, tmp_path: Path) -> None:
    from training.errors import UserError

    with pytest.raises(UserError, match="arch 'resnet18' .checkpoint: 'lenet5'"):
        train_main(tiny_config(tmp_path, arch="resnet18", resume=tiny_run.last_checkpoint))


@pytest.mark.slow
def test_user_errors_exit_2_without_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "training.train", "--dataset", "mnist-typo", "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO_ROOT, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "unknown dataset 'mnist-typo'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_ddp_two_cpu_processes(fashion_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--standalone", "-m", "training.train", "--arch", "lenet5",
        "--dataset", "fashion-mnist", "--epochs", "1", "--batch-size", "32",
        "--train-subset", "256", "--test-subset", "64", "--threads", "1", "--out", str(out),
    ]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "last.pt", METRICS_FILE]
    rows = _metrics(out)
    assert len(rows) == 1  # rank 0 alone writes
    content = load_checkpoint(out / "last.pt")
    assert content["config"]["batch_size"] == 32
    assert not any(k.startswith("module.") for k in content["model"])  # unwrapped from DDP
    assert "x2" in result.stderr  # both processes joined: 256 images / 2 ranks / 32 = 4 steps
    assert "4 steps per epoch" in result.stderr


@pytest.mark.parametrize("key", ["num_classes", "in_channels", "image_size"])
def test_arch_kwargs_that_training_sets_are_refused_in_one_line(
    key: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    argv = ["--arch", "resnet18", "--arch-kwarg", f"{key}=5", "--out", str(tmp_path / "run")]
    assert run_cli(train_cli, argv) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [errors[0]]
    assert f"--arch-kwarg {key}: it is set from" in errors[0]
    assert not (tmp_path / "run").exists()
