"""Shared plumbing of the entry points: logging setup and turning `UserError` into exit 2."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from importlib.machinery import ModuleSpec

from training.errors import UserError

logger = logging.getLogger(__name__)
USER_ERROR_EXIT_CODE = 2
QUIET_LOGGERS = ("onnxscript", "onnx_ir", "torch.onnx", "torch._export")


def command_logger(name: str, spec: ModuleSpec | None) -> logging.Logger:
    """An entry point's logger, named by its module even when it runs with -m (as __main__,
    where `spec` still has the dotted name): log lines say where they come from."""
    return logging.getLogger(spec.name if spec is not None else name)


def _not_library_chatter(record: logging.LogRecord) -> bool:
    """False for INFO and below that a library logged on the root logger itself
    (onnxruntime.quantization: "Created a copy of bias input ..." per tensor)."""
    return (
        record.levelno > logging.INFO
        or record.name != "root"
        or "onnxruntime" not in (record.pathname)
    )


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in QUIET_LOGGERS:  # the ONNX exporter logs every optimisation pass at INFO
        logging.getLogger(chatty).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        if _not_library_chatter not in handler.filters:
            handler.addFilter(_not_library_chatter)


def run_cli(entry: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """Run `entry(argv)`; a `UserError` becomes one logged line and exit status 2."""
    setup_logging()
    try:
        entry(argv)
    except UserError as err:
        logger.error("%s", err)
        return USER_ERROR_EXIT_CODE
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130
    return 0


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a count, a size, a batch)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
