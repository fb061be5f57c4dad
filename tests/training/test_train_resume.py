"""Resuming a run from the command line: the checkpoint's settings and folder by default, a
longer --epochs or another batch size re-spans the LR schedule, settings that shape the weights
cannot change, and what cannot be resumed says so in one line."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from tests.training.conftest import write_tree
from training.checkpoint import load_checkpoint
from training.errors import UserError
from training.train import METRICS_FILE, cli, config_from_args, get_args_parser

# Real data that is always here (scikit-learn's digits), small enough for a second a run.
BASE = ["--arch", "lenet5", "--dataset", "digits", "--train-subset", "256",
        "--test-subset", "64", "--batch-size", "64", "--threads", "1"]  # fmt: skip


def _rows(out: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_a_longer_run_continues_in_the_checkpoints_folder(tmp_path: Path, schedule: str) -> None:
    out = tmp_path / "run"
    cli([*BASE, "--schedule", schedule, "--epochs", "1", "--out", str(out)])
    cli(["--resume", str(out / "last.pt"), "--epochs", "3"])  # nothing else: its settings
    rows = _rows(out)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    state = load_checkpoint(out / "last.pt")
    assert (state["epoch"], state["config"]["schedule"]) == (3, schedule)
    assert state["config"]["train_subset"] == 256  # taken from the checkpoint
    lrs = [r["lr"] for r in rows]
    if schedule == "cosine":  # one decay over the three epochs, not back up from zero
        assert lrs[0] > lrs[1] > lrs[2] > 0
    else:  # the one-cycle warm-up (first 30 %) now ends inside epoch 1 of 3
        assert lrs[0] < lrs[1]
        assert lrs[2] < lrs[1]
    assert not (tmp_path / "runs").exists()


def test_another_batch_size_re_spans_the_schedule(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cli([*BASE, "--epochs", "2", "--stop-after", "1", "--out", str(out)])
    cli(["--resume", str(out / "last.pt"), "--batch-size", "32"])
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] == 2
    assert state["scheduler"]["total_steps"] == 2 * 256 // 32


def test_lr_schedule_and_decay_given_on_resume_are_the_ones_used(tmp_path: Path) -> None:
    """--lr, --schedule and --weight-decay beside --resume rebuild what they set, advanced to
    the steps taken (4 per epoch here), and the checkpoint records what was used."""
    out = tmp_path / "run"
    cli([*BASE, "--epochs", "3", "--stop-after", "1", "--out", str(out)])
    runs = {
        "same": [],
        "lr": ["--lr", "0.03"],
        "constant": ["--schedule", "constant", "--lr", "0.004"],
        "cosine": ["--schedule", "cosine", "--lr", "0.0001", "--weight-decay", "0.5"],
    }
    lrs = {}
    for name, extra in runs.items():
        copy = tmp_path / name
        shutil.copytree(out, copy)
        cli(["--resume", str(copy / "last.pt"), "--stop-after", "1", *extra])
        lrs[name] = _rows(copy)[1]["lr"]  # the rate as epoch 2 begins
    assert lrs["lr"] == pytest.approx(lrs["same"] * 0.03 / 0.003)  # one-cycle, ten times higher
    assert lrs["constant"] == pytest.approx(0.004)
    assert lrs["cosine"] == pytest.approx(0.0001 * (1 + math.cos(math.pi * 4 / 12)) / 2)
    state = load_checkpoint(tmp_path / "cosine" / "last.pt")
    assert (state["config"]["schedule"], state["config"]["lr"]) == ("cosine", 0.0001)
    assert {g["weight_decay"] for g in state["optimizer"]["param_groups"]} == {0.5}
    assert "max_lr" not in state["optimizer"]["param_groups"][0]  # nothing left of one-cycle


def test_a_run_resumed_into_another_folder_takes_its_best_and_history(tmp_path: Path) -> None:
    """The new --out holds the whole run: best.pt (export reads it) even when the new epoch is
    worse, and every epoch's metrics row."""
    out, more = tmp_path / "run", tmp_path / "more"
    cli([*BASE, "--epochs", "2", "--stop-after", "1", "--out", str(out)])
    cli(["--resume", str(out / "last.pt"), "--lr", "5", "--out", str(more)])  # a ruinous rate
    assert [r["epoch"] for r in _rows(more)] == [1, 2]
    best = load_checkpoint(more / "best.pt")
    assert best["epoch"] == load_checkpoint(more / "last.pt")["best_epoch"]
    assert [r["epoch"] for r in _rows(out)] == [1]  # the first folder as it was


def test_settings_that_shape_the_weights_cannot_change(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cli([*BASE, "--epochs", "2", "--stop-after", "1", "--out", str(out)])
    other = ["--optimizer", "sgd", "--image-size", "32", "--arch-kwarg", "activation=tanh"]
    with pytest.raises(UserError) as refused:
        cli(["--resume", str(out / "last.pt"), *other])
    message = str(refused.value)
    for part in ("optimizer 'sgd'", "arch_kwargs", "--image-size", "another --out"):
        assert part in message
    assert load_checkpoint(out / "last.pt")["epoch"] == 1  # untouched


def test_a_finished_run_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "run"
    cli([*BASE, "--epochs", "1", "--out", str(out)])
    with caplog.at_level("WARNING"):
        cli(["--resume", str(out / "last.pt")])
    assert "trained 1 of 1 epochs already" in caplog.text
    assert len(_rows(out)) == 1


def test_what_is_not_a_checkpoint_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "last.pt").write_bytes(b"hello\n")
    with pytest.raises(UserError, match="a folder, not a .pt file .pass its last.pt"):
        cli(["--resume", str(tmp_path)])
    with pytest.raises(UserError, match="not a checkpoint written by training.train") as bad:
        cli(["--resume", str(tmp_path / "last.pt")])
    assert "\n" not in str(bad.value)
    assert "weights_only" not in str(bad.value)


def test_a_moved_image_folder_is_named_on_resume(tmp_path: Path) -> None:
    """The folder a run trained on has moved: resuming says to name where it is now, and with
    --dataset naming it the run goes on; a folder of other classes is refused."""
    tree = write_tree(tmp_path / "photos", {"a": 6, "b": 6})
    out = tmp_path / "run"
    small = ["--arch", "lenet5", "--image-size", "16", "--color-mode", "L", "--batch-size", "4",
             "--threads", "1", "--epochs", "2", "--stop-after", "1", "--out", str(out)]  # fmt: skip
    cli(["--dataset", f"imagefolder:{tree}", *small])
    moved = tree.rename(tmp_path / "moved")
    with pytest.raises(UserError, match="is not there any more: resume with --dataset"):
        cli(["--resume", str(out / "last.pt")])
    other = write_tree(tmp_path / "other", {"a": 6, "c": 6})
    with pytest.raises(UserError, match="has classes a, c; the checkpoint was trained on a, b"):
        cli(["--resume", str(out / "last.pt"), "--dataset", f"imagefolder:{other}"])
    cli(["--resume", str(out / "last.pt"), "--dataset", f"imagefolder:{moved}"])
    state = load_checkpoint(out / "last.pt")
    assert (state["epoch"], state["dataset"]) == (2, f"imagefolder:{moved}")


def test_an_image_folder_is_stored_with_its_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    args = get_args_parser().parse_args(["--dataset", "imagefolder:photos"])
    assert config_from_args(args).dataset == f"imagefolder:{tmp_path / 'photos'}"


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (["--lr", "-1"], "--lr must be a positive number"),
        (["--lr", "nan"], "--lr must be a positive number"),
        (["--weight-decay", "-1"], "--weight-decay must be a number >= 0"),
        (["--momentum", "-0.5"], "--momentum must be a number >= 0"),
        (["--label-smoothing", "2"], "--label-smoothing must be between 0 and 1"),
        (["--workers", "-1"], "--workers must be 0 or more"),
        (["--device", "foo"], "--device 'foo': expected auto, cpu or cuda"),
        (["--device", "cuda"], "--device cuda: torch finds no CUDA device"),
        (["--color-mode", "RGB"], "--color-mode RGB: digits images are L"),
    ],
)
def test_settings_torch_would_refuse_are_one_line(
    tmp_path: Path, given: list[str], message: str
) -> None:
    """Refused in one line before any epoch (torch raises its own error for most, some only
    after the data has loaded); the machine here has no CUDA device."""
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        cli([*BASE, *given, "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run" / "last.pt").exists()


def test_a_new_run_never_overwrites_another(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cli([*BASE, "--epochs", "1", "--out", str(out)])
    before = (out / "last.pt").read_bytes()
    with pytest.raises(UserError, match="holds a run already: continue it with --resume"):
        cli([*BASE, "--epochs", "1", "--out", str(out)])
    assert (out / "last.pt").read_bytes() == before
    assert len(_rows(out)) == 1
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        cli([*BASE, "--out", str(tmp_path / "file")])
