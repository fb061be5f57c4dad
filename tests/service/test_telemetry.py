"""ONNX Runtime's telemetry stays off (service/__init__.py): its Linux wheels otherwise start a
client on import that writes a device ID and an event store under ~/.cache/Microsoft and sends
events to mobile.events.data.microsoft.com."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

MODEL = REPO_ROOT / "models" / "lenet5-fashion" / "1" / "model.onnx"


@pytest.mark.parametrize("first", ["service.runtime", "training.onnx_check"])
def test_importing_the_service_or_training_turns_it_off(tmp_path: Path, first: str) -> None:
    code = (
        f"import {first}\n"
        "import onnxruntime as ort\n"
        f"ort.InferenceSession({str(MODEL)!r}, providers=['CPUExecutionProvider'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "HOME": str(tmp_path)},
        cwd=REPO_ROOT,
        check=True,
        timeout=120,
    )
    assert not (tmp_path / ".cache" / "Microsoft").exists()
