"""Property-based API fuzzing with schemathesis against the service's own OpenAPI schema, on a
real uvicorn server: no 5xx, every documented response conforms to its schema.

Bounded in CI (about 1,000 cases); the long run (docs/security.md) sets
CONVSERVE_FUZZ_EXAMPLES=100 for more than 5,000.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from service.settings import Settings
from tests.service.server import threaded_server

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
ADMIN_KEY = "fuzz-admin"
EXAMPLES_PER_OPERATION = int(os.environ.get("CONVSERVE_FUZZ_EXAMPLES", "10"))
MIN_CASES = 500
ST = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "st"
# Unload is left out: fuzzing it would unload the model under test (its 503 readiness would
# then count as a server error); tests/e2e/test_reliability_reload.py covers it.
EXCLUDE = "/unload$"
# Both runs pin the request deadline header to a generous budget: under a fuzzed budget of
# microseconds the service answers 503 (shed: the loop lags more than the budget) or 504 (the
# deadline passed before compute) by design (docs/service.md, API), which the no-5xx check
# cannot tell from a bug. Bad values of the header are tested in test_api.py.
DEADLINE = '"header.X-Request-Timeout-Ms" = "60000"\n'
# Real names for one of the two runs, so the fuzzer gets past 404 into the handlers.
REAL_NAMES = '"path.model" = "tiny-cnn"\n"path.version" = 1\n'
_CASES = re.compile(r"(\d+) generated, (\d+) passed")


def _run(base_url: str, config: Path, cwd: Path) -> int:
    command = [str(ST), "--config-file", str(config)]
    command += [
        "run",
        f"{base_url}/openapi.json",
        "--checks",
        "not_a_server_error,response_schema_conformance",
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--exclude-path-regex",
        EXCLUDE,
        "--header",
        f"X-API-Key: {ADMIN_KEY}",
        "--seed",
        "20261123",
        "--no-color",
        "--workers",
        "1",
        "--generation-database",
        "none",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=560, check=False, cwd=cwd
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    match = _CASES.search(result.stdout)
    assert match is not None, result.stdout[-2000:]
    generated, passed = int(match.group(1)), int(match.group(2))
    assert generated == passed
    return generated


def test_openapi_fuzzing_finds_no_server_error(tiny_repo: Path, tmp_path: Path) -> None:
    if not ST.exists():
        pytest.fail(f"{ST} missing: make setup installs schemathesis (dev extra)")
    named = tmp_path / "named.toml"
    named.write_text("[parameters]\n" + DEADLINE + REAL_NAMES)
    unnamed = tmp_path / "unnamed.toml"
    unnamed.write_text("[parameters]\n" + DEADLINE)
    settings = Settings(
        model_repository=tiny_repo,
        default_model="tiny-cnn",
        providers="cpu",
        admin_key=ADMIN_KEY,
    )
    with threaded_server(settings) as base_url:
        cases = _run(base_url, named, tmp_path) + _run(base_url, unnamed, tmp_path)
    print(f"\nschemathesis: {cases} cases, 0 failures")  # noqa: T201
    assert cases >= MIN_CASES
