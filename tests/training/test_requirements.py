"""Training commands where only the service is installed: one ERROR line naming `make setup` and
exit status 2, no traceback. Run in subprocesses with torch hidden (`sys.modules["torch"] =
None` makes every `import torch` fail as a missing package does)."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from training.requirements import SETUP_COMMAND, TRAINING_EXTRA_MODULES

REPO_ROOT = Path(__file__).resolve().parents[2]
# Run module argv[2] as `python -m` would, with the comma-separated modules of argv[1] hidden.
RUN_WITHOUT = (
    "import runpy, sys\n"
    "for name in sys.argv[1].split(','):\n"
    "    sys.modules[name] = None\n"
    "module = sys.argv[2]\n"
    "sys.argv = [module, *sys.argv[3:]]\n"
    "runpy.run_module(module, run_name='__main__', alter_sys=True)\n"
)
GUARD = re.compile(r"^require_training_extra\(__name__\)", re.MULTILINE)
# Distribution names whose import name differs.
IMPORT_NAMES = {"scikit-learn": "sklearn"}


def guarded_commands() -> list[str]:
    """The training modules that check the extra first thing (the torch-needing commands)."""
    return sorted(
        f"training.{path.stem}"
        for path in (REPO_ROOT / "training").glob("*.py")
        if GUARD.search(path.read_text(encoding="utf-8"))
    )


def run_without(hidden: str, module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", RUN_WITHOUT, hidden, module, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_torch_commands_are_guarded() -> None:
    assert {"training.train", "training.export", "training.evaluate"} <= set(guarded_commands())


@pytest.mark.parametrize("module", guarded_commands())
def test_a_command_without_torch_says_make_setup(module: str) -> None:
    result = run_without("torch", module, "--help")
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    (line,) = lines
    assert " ERROR " in line
    assert f"python -m {module} needs the training extra, but torch is not installed" in line
    assert f"run `{SETUP_COMMAND}`" in line


def test_every_missing_module_is_named() -> None:
    result = run_without("torch,tqdm", "training.evaluate")
    assert result.returncode == 2
    assert "but torch, tqdm are not installed" in result.stderr


def test_imported_as_a_library_it_raises_module_not_found() -> None:
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "try:\n"
        "    import training.evaluate\n"
        "except ModuleNotFoundError as err:\n"
        "    assert err.name == 'torch', err.name\n"
        "    assert str(err).startswith('training.evaluate needs the training extra'), err\n"
        "    assert 'make setup' in str(err), err\n"
        "else:\n"
        "    raise AssertionError('imported without torch')\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=120)


def test_the_check_itself_imports_no_third_party_module() -> None:
    """It runs where the extra is missing, so it may not need any of it (nor numpy)."""
    hidden = ",".join([*TRAINING_EXTRA_MODULES, "numpy"])
    code = (
        "import sys\n"
        f"for name in {hidden!r}.split(','):\n"
        "    sys.modules[name] = None\n"
        "from training.requirements import missing_training_modules\n"
        f"assert missing_training_modules() == {list(TRAINING_EXTRA_MODULES)!r}\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True, timeout=60)


def test_the_modules_are_the_train_extra() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    extra = pyproject["project"]["optional-dependencies"]["train"]
    names = [re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0] for requirement in extra]
    assert sorted(IMPORT_NAMES.get(n, n) for n in names) == sorted(TRAINING_EXTRA_MODULES)
