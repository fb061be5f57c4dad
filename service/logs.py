"""Logging setup for the entry point: text or one JSON object per line."""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    def __init__(self, *, with_pid: bool = False) -> None:
        super().__init__()
        self.with_pid = with_pid

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.with_pid:
            entry["pid"] = record.process
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


MULTIPART_LOGGER = "python_multipart"


def configure(log_format: str, level: str, *, with_pid: bool = False) -> None:
    """Root logging to stderr; `with_pid` (worker processes) names the process in each line."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(with_pid=with_pid))
    else:
        pid = " [%(process)d]" if with_pid else ""
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s{pid} %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The multipart parser warns about every malformed body a client sends, a line each; the
    # client already gets its 400, and the log must not be a client's to fill.
    logging.getLogger(MULTIPART_LOGGER).setLevel(max(root.level, logging.ERROR))
