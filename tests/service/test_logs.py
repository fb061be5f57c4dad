from __future__ import annotations

import json
import logging

from service.logs import JsonFormatter


def test_json_lines() -> None:
    record = logging.LogRecord("service.x", logging.WARNING, __file__, 1, "a %s", ("b",), None)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["level"] == "warning"
    assert entry["logger"] == "service.x"
    assert entry["message"] == "a b"
    assert entry["time"].endswith("Z")
