from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.__main__ import warn_unknown_settings
from service.settings import (
    HIDDEN_SETTINGS,
    Settings,
    build_parser,
    cgroup_cpu_limit,
    cpu_count,
    env_name,
    settings_env,
    settings_from_args,
)
from tests.service.server import REPO_ROOT


def test_defaults_follow_design() -> None:
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.model_repository == Path("models")
    assert s.default_model == "lenet5-fashion"
    assert (s.host, s.port) == ("127.0.0.1", 8000)
    assert s.max_body_bytes == 16 * 1024 * 1024
    assert s.max_image_pixels == 40_000_000
    assert s.providers == "auto"
    assert s.model_poll_seconds == 0
    assert s.api_key is None


def test_env_prefix_and_cli_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVSERVE_MAX_BATCH_SIZE", "7")
    monkeypatch.setenv("CONVSERVE_PORT", "9000")
    s = settings_from_args(["--port", "9100", "--providers", "cpu"])
    assert s.max_batch_size == 7  # from the environment
    assert s.port == 9100  # the flag wins
    assert s.providers == "cpu"


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVSERVE_MAX_BATCH_SIZE", "0")
    with pytest.raises(ValidationError):
        Settings()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--providers", "tpu"])


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


def test_a_missing_repository_without_polling_exits_with_one_line(tmp_path: Path) -> None:
    """Nothing could ever be loaded: refused at startup, not served unready for ever. With
    polling on, the folder may appear later (a volume mounted after start): accepted."""
    missing = tmp_path / "not-there"
    with pytest.raises(SystemExit) as exited:
        settings_from_args(["--model-repository", str(missing)])
    assert exited.value.code == 2
    polled = settings_from_args(["--model-repository", str(missing), "--model-poll-seconds", "5"])
    assert polled.model_repository == missing


def test_secrets_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVSERVE_API_KEY", "hunter2")
    shown = Settings().masked()
    assert shown["api_key"] == "***"
    assert shown["admin_key"] is None
    assert "hunter2" not in repr(shown)


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_key_is_no_key(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    """docker-compose.yml passes `${CONVSERVE_API_KEY:-}`: empty must leave inference open and
    the repository routes disabled, not require a key no client can send."""
    monkeypatch.setenv("CONVSERVE_API_KEY", value)
    monkeypatch.setenv("CONVSERVE_ADMIN_KEY", value)
    shown = Settings()
    assert (shown.api_key, shown.admin_key) == (None, None)


@pytest.mark.parametrize(
    ("v2", "v1", "expected"),
    [
        ("150000 100000\n", None, 2),  # docker --cpus 1.5: two threads' worth, rounded up
        ("max 100000\n", None, None),  # no limit
        ("50000 100000\n", None, 1),
        (None, ("-1", "100000"), None),  # cgroup v1, no limit
        (None, ("400000", "100000"), 4),
        (None, None, None),  # not in a cgroup we can read
        ("garbage", None, None),
    ],
)
def test_a_containers_cpu_limit_bounds_the_cores(
    tmp_path: Path, v2: str | None, v1: tuple[str, str] | None, expected: int | None
) -> None:
    v2_file, v1_dir = tmp_path / "cpu.max", tmp_path / "cpu"
    if v2 is not None:
        v2_file.write_text(v2)
    if v1 is not None:
        v1_dir.mkdir()
        (v1_dir / "cpu.cfs_quota_us").write_text(v1[0] + "\n")
        (v1_dir / "cpu.cfs_period_us").write_text(v1[1] + "\n")
    assert cgroup_cpu_limit(v2_file, v1_dir) == expected


def test_intra_op_threads_split_cores() -> None:
    cores = cpu_count()
    alone = Settings(instances=1, intra_op_threads=0)
    assert alone.effective_intra_op_threads == cores
    assert alone.solo_threads == 0  # the one instance already has every core
    shared = Settings(instances=2, intra_op_threads=0)
    assert shared.effective_intra_op_threads == max(1, cores // 2)
    assert shared.solo_threads == (cores if cores > 1 else 0)
    assert Settings(intra_op_threads=3).effective_intra_op_threads == 3
    assert Settings(intra_op_threads=3).solo_threads == 0  # set threads: no solo session


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


def test_settings_env_rebuilds_the_same_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """What worker processes (CONVSERVE_WORKERS > 1) rebuild from their environment."""
    given = Settings(
        api_key="s3cret",
        workers=3,
        port=0,
        jpeg_draft=False,
        max_queue_delay_ms=1.5,
        model_repository=Path("/srv/models"),
        log_format="json",
    )
    for name in Settings.model_fields:
        monkeypatch.delenv(env_name(name), raising=False)
    for name, value in settings_env(given).items():
        if value is not None:
            monkeypatch.setenv(name, value)
    assert settings_env(given)["CONVSERVE_ADMIN_KEY"] is None  # unset stays unset
    rebuilt = Settings()
    assert rebuilt == given
    assert rebuilt.api_key is not None
    assert rebuilt.api_key.get_secret_value() == "s3cret"


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
