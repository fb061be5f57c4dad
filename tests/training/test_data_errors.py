"""Datasets that are wrong on disk: each answer is a `UserError` that says what and where."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from training.data.datasets import load_dataset
from training.errors import UserError


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
