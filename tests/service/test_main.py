"""`python -m service`: settings from flags and environment, `--help`, and the warnings it
logs at startup about the environment."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from service.__main__ import (
    HIDDEN_SETTINGS,
    build_parser,
    settings_from_args,
    warn_unknown_settings,
)
from service.settings import Settings, env_name
from tests.service.server import REPO_ROOT


def test_env_prefix_and_cli_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVSERVE_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("CONVSERVE_PORT", "9000")
    s = settings_from_args(["--port", "9100", "--providers", "cpu"])
    assert s.max_batch_size == 7  # from the environment
    assert s.port == 9100  # the flag wins
    assert s.providers == "cpu"


def test_a_bad_flag_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A value outside the choices, an unknown flag, a flag without its value: one line each,
    exit 2, not the usage block."""
    for args in (["--providers", "tpu"], ["--nosuch", "1"], ["--port"]):
        with pytest.raises(SystemExit) as exited:
            build_parser().parse_args(args)
        assert exited.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert err.startswith("python -m service: ")
        assert "usage:" not in err


def test_invalid_setting_exits_with_one_line_not_a_traceback() -> None:
    env = {**os.environ, "CONVSERVE_PORT": "99999", "CONVSERVE_API_KEY": "hunter2"}
    result = subprocess.run(
        [sys.executable, "-m", "service", "--workers", "0"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "--workers / CONVSERVE_WORKERS: Input should be greater than or equal to 1" in (
        result.stderr
    )
    assert "--port / CONVSERVE_PORT" in result.stderr
    assert "Traceback" not in result.stderr
    assert "hunter2" not in result.stderr


def test_an_address_that_cannot_be_listened_on_exits_with_one_line() -> None:
    """Found before any model is loaded: a port in use, an address that does not resolve."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for args, said in (
            (["--port", str(port)], f"cannot listen on 127.0.0.1:{port}"),
            (["--host", "not.an.address"], "cannot listen on 'not.an.address'"),
        ):
            result = subprocess.run(
                [sys.executable, "-m", "service", *args],
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 2, result.stderr
            assert result.stderr.count("\n") == 1, result.stderr
            assert said in result.stderr
            assert "--host / CONVSERVE_HOST, --port / CONVSERVE_PORT" in result.stderr


def test_a_missing_repository_without_polling_exits_with_one_line(tmp_path: Path) -> None:
    """Nothing could ever be loaded: refused at startup, not served unready for ever. With
    polling on, the folder may appear later (a volume mounted after start): accepted."""
    missing = tmp_path / "not-there"
    with pytest.raises(SystemExit) as exited:
        settings_from_args(["--model-repository", str(missing)])
    assert exited.value.code == 2
    polled = settings_from_args(["--model-repository", str(missing), "--model-poll-seconds", "5"])
    assert polled.model_repository == missing


def test_help_lists_every_setting() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    text = " ".join(result.stdout.split())
    for name in Settings.model_fields:
        if name in HIDDEN_SETTINGS:  # testing only: documented in docs/security.md
            assert "--" + name.replace("_", "-") not in text
            continue
        assert "--" + name.replace("_", "-") in text
        assert env_name(name) in text


def test_a_misspelt_setting_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    environ = {
        "CONVSERVE_MAX_BATCHSIZE": "4",  # the typo
        "CONVSERVE_MAX_BATCH_SIZE": "8",
        "CONVSERVE_HOST_PORT": "8080",  # docker-compose.yml's, on the host side
        "PATH": "/usr/bin",
    }
    with caplog.at_level("WARNING"):
        assert warn_unknown_settings(environ) == ["CONVSERVE_MAX_BATCHSIZE"]
    assert "did you mean CONVSERVE_MAX_BATCH_SIZE?" in caplog.text
