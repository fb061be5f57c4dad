"""The entry points' shared plumbing (training.cli): counts given on a command line are integers
of at least 1, refused by argparse (exit 2) on every entry point that takes one."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable

import pytest

from training import evaluate, export
from training.cli import positive_int

COUNT_OPTIONS = [
    (evaluate.get_args_parser, ["--checkpoint", "c.pt"], "--batch-size"),
    (evaluate.get_args_parser, ["--checkpoint", "c.pt"], "--limit"),
    (evaluate.get_args_parser, ["--checkpoint", "c.pt"], "--threads"),
    (export.get_args_parser, ["--checkpoint", "c.pt", "--name", "x"], "--max-batch-size"),
    (export.get_args_parser, ["--checkpoint", "c.pt", "--name", "x"], "--parity-samples"),
    (export.get_args_parser, ["--checkpoint", "c.pt", "--name", "x"], "--version"),
    (export.get_args_parser, ["--checkpoint", "c.pt", "--name", "x"], "--threads"),
]


@pytest.mark.parametrize(
    ("parser", "required", "option"),
    COUNT_OPTIONS,
    ids=[f"{p.__module__.rpartition('.')[2]}{o}" for p, _, o in COUNT_OPTIONS],
)
@pytest.mark.parametrize("value", ["0", "-3"])
def test_counts_must_be_positive(
    parser: Callable[[], argparse.ArgumentParser], required: list[str], option: str, value: str
) -> None:
    assert parser().parse_args([*required, option, "1"])  # 1 is a count
    with pytest.raises(SystemExit) as info:
        parser().parse_args([*required, option, value])
    assert info.value.code == 2


def test_positive_int_says_what_it_expected() -> None:
    assert positive_int("12") == 12
    with pytest.raises(argparse.ArgumentTypeError, match="must be at least 1, got 0"):
        positive_int("0")
    with pytest.raises(argparse.ArgumentTypeError, match="expected an integer, got '1.5'"):
        positive_int("1.5")


def test_library_info_on_the_root_logger_is_dropped() -> None:
    """onnxruntime.quantization logs a line per tensor with `logging.info` on the root logger;
    the training commands' handler drops those, and nothing else."""
    from training.cli import _not_library_chatter

    def record(name: str, level: int, path: str) -> logging.LogRecord:
        return logging.LogRecord(name, level, path, 1, "Created a copy of bias input", None, None)

    quantizer = "/venv/site-packages/onnxruntime/quantization/base_quantizer.py"
    assert not _not_library_chatter(record("root", logging.INFO, quantizer))
    assert _not_library_chatter(record("root", logging.WARNING, quantizer))
    assert _not_library_chatter(record("training.export", logging.INFO, "/x/training/export.py"))
    assert _not_library_chatter(record("root", logging.INFO, "/x/training/export.py"))
