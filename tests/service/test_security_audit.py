"""pip-audit of the locked dependencies (constraints.txt): no known vulnerability, except those
listed in ACCEPTED with the reason each is acceptable. Needs the PyPI advisory API
(pypi.org/pypi/<name>/<version>/json). Where that network service cannot be reached (this
project's machines reach the package indexes only, and answer 404 there) the test skips with the
reason, in CI too: it is a network service outside the project, not a system part CI can install."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, require_system_part

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
PIP_AUDIT = REPO_ROOT / ".venv" / "bin" / "pip-audit"
# Vulnerability id -> why it does not apply to convserve. Empty: none accepted.
ACCEPTED: dict[str, str] = {}


def locked_requirements(constraints: Path) -> list[str]:
    """`name==version` lines of constraints.txt (comments, editables and local paths left out)."""
    lines = []
    for raw in constraints.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-") and " @ " not in line:
            lines.append(line)
    return lines


def test_locked_dependencies_have_no_known_vulnerability(tmp_path: Path) -> None:
    require_system_part(PIP_AUDIT.exists(), "pip-audit", "make setup (dev extra)")
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("\n".join(locked_requirements(REPO_ROOT / "constraints.txt")) + "\n")
    command = [
        str(PIP_AUDIT),
        "--requirement",
        str(requirements),
        "--no-deps",
        "--disable-pip",
        "--format",
        "json",
        "--progress-spinner",
        "off",
        "--vulnerability-service",
        "pypi",
    ]
    for vuln_id in ACCEPTED:
        command += ["--ignore-vuln", vuln_id]
    result = subprocess.run(command, capture_output=True, text=True, timeout=540, check=False)
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        report = {"dependencies": []}
    dependencies = report["dependencies"]
    audited = [d for d in dependencies if "skip_reason" not in d]
    if not audited:
        pytest.skip(
            "the PyPI vulnerability API (pypi.org/pypi/<name>/<version>/json) cannot be reached: "
            f"{len(dependencies)} dependencies, none audited: {result.stderr.strip()[-300:]}"
        )
    found = {
        f"{d['name']}=={d['version']}": [v["id"] for v in d["vulns"]]
        for d in audited
        if d.get("vulns")
    }
    skipped = sorted(d["name"] for d in dependencies if "skip_reason" in d)
    print(f"\npip-audit: {len(audited)} audited, {len(skipped)} skipped {skipped}")  # noqa: T201
    assert found == {}, f"known vulnerabilities (fix the pin or justify in ACCEPTED): {found}"
