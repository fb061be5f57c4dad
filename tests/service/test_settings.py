from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from service.cpus import cpu_count
from service.settings import Settings, env_name, settings_env


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


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVSERVE_MAX_BATCH_SIZE", "0")
    with pytest.raises(ValidationError):
        Settings()


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


@pytest.mark.parametrize(
    "given",
    [{"default_model": "Lenet5"}, {"models": "lenet5-fashion,BAD NAME"}, {"models": "../x"}],
)
def test_a_name_no_model_can_have_is_refused(given: dict[str, str]) -> None:
    """The repository's name rule: such a server would wait unready for ever (or answer 404)."""
    with pytest.raises(ValidationError, match="can never name a model"):
        Settings(**given)
    assert Settings(models=" lenet5-fashion , resnet18-int8 ,").model_names == [
        "lenet5-fashion",
        "resnet18-int8",
    ]


@pytest.mark.parametrize("name", ["max_queue_delay_ms", "max_batch_compute_ms", "body_timeout_s"])
@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_no_float_setting_takes_infinity_or_nan(name: str, value: str) -> None:
    with pytest.raises(ValidationError, match="finite number"):
        Settings(**{name: value})
