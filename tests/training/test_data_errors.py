"""Datasets that are wrong on disk: each answer is a `UserError` that says what and where."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from torch.utils.data import ConcatDataset, DataLoader

from tests.training.conftest import IMAGE_SIDE, write_tree
from training.data.datasets import load_dataset, with_transform
from training.data.transforms import eval_transform
from training.errors import UserError


def test_val_labels_are_the_train_splits(tmp_path: Path) -> None:
    """A val split lacking a train class keeps the train indices (flower is 1, not 0)."""
    write_tree(tmp_path / "train", {"china": 2, "flower": 2, "gray": 2})
    write_tree(tmp_path / "val", {"flower": 3, "gray": 1})
    data = load_dataset(f"imagefolder:{tmp_path}", image_size=IMAGE_SIDE)
    assert data.labels == ("china", "flower", "gray")
    test = with_transform(data.test, eval_transform(data.preprocessing))
    assert [test[i][1] for i in range(4)] == [1, 1, 1, 2]
    assert data.test.classes == ["china", "flower", "gray"]  # type: ignore[attr-defined]


def test_val_class_missing_from_train_is_named(tmp_path: Path) -> None:
    write_tree(tmp_path / "train", {"china": 2, "flower": 2})
    write_tree(tmp_path / "val", {"flower": 1, "zebra": 1})
    with pytest.raises(UserError, match=r"zebra.*train split lacks.*china, flower"):
        load_dataset(f"imagefolder:{tmp_path}", image_size=IMAGE_SIDE)


def test_corrupt_image_is_a_user_error_naming_the_file(tmp_path: Path) -> None:
    write_tree(tmp_path, {"china": 4, "gray": 4})
    bad = tmp_path / "china" / "zzz.jpg"
    bad.write_text("hello\n")
    data = load_dataset(f"imagefolder:{tmp_path}", image_size=IMAGE_SIDE)  # no pre-scan
    transform = eval_transform(data.preprocessing)
    both = ConcatDataset(
        [with_transform(data.train, transform), with_transform(data.test, transform)]
    )
    with pytest.raises(UserError, match=r"cannot read image .*china/zzz\.jpg"):
        list(DataLoader(both, batch_size=4))


@pytest.mark.parametrize("spec", ["imagefolder:", "imagefolder:  "])
def test_imagefolder_without_a_path(
    spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tree(tmp_path, {"a": 1, "b": 1})
    monkeypatch.chdir(tmp_path)  # a class tree in the cwd must not be picked up
    with pytest.raises(UserError, match="imagefolder: needs a path"):
        load_dataset(spec)


def test_corrupt_cifar10_says_which_files(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "data_batch_1").write_bytes(b"not a pickle")
    with pytest.raises(UserError) as info:
        load_dataset("cifar10", tmp_path)
    message = str(info.value)
    assert "not found" not in message
    assert "unreadable" in message
    assert "data_batch_1 corrupt" in message
    assert "test_batch missing" in message


def test_missing_fashion_mnist_says_the_hint_once(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        load_dataset("fashion-mnist", tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert message.count("dataset-fashion-mnist") == 1
    assert message.count("--data-dir") == 1


def test_corrupt_fashion_mnist_is_unreadable_not_missing(tmp_path: Path) -> None:
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (tmp_path / f"{stem}.gz").write_bytes(b"hello")  # not gzip
    with pytest.raises(UserError, match=r"Fashion-MNIST files in .* are unreadable"):
        load_dataset("fashion-mnist", tmp_path)
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (tmp_path / f"{stem}.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00"))  # short
    with pytest.raises(UserError, match="unreadable"):
        load_dataset("fashion-mnist", tmp_path)


def test_unreadable_image_in_a_worker_is_still_one_line(tmp_path: Path) -> None:
    """DataLoader workers re-raise with the worker's traceback in the message; it is dropped."""
    write_tree(tmp_path, {"china": 1, "gray": 1})
    (tmp_path / "china" / "zzz.jpg").write_text("hello\n")
    data = load_dataset(f"imagefolder:{tmp_path}", image_size=IMAGE_SIDE)
    transform = eval_transform(data.preprocessing)
    both = ConcatDataset(
        [with_transform(data.train, transform), with_transform(data.test, transform)]
    )
    with pytest.raises(UserError) as info:
        list(DataLoader(both, batch_size=4, num_workers=1))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("imagefolder: cannot read image ")
    assert message.split(": ")[1].endswith("china/zzz.jpg")
