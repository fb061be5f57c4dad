"""The training extra, checked before torch is imported: a command run where only the service is
installed (`make serve`) says, in one line, to run `make setup`, instead of a ModuleNotFoundError
traceback. No third-party import here: this runs where they are missing.

The torch-needing entry modules (train, export, evaluate) call it first thing, before `import
torch`; the torch-free ones (import_onnx) do not, and keep working with the service extra alone.
"""

from __future__ import annotations

import importlib.util
import logging
import sys

from training.cli import USER_ERROR_EXIT_CODE, setup_logging

logger = logging.getLogger(__name__)
# Import names of pyproject.toml's `train` extra (scikit-learn is `sklearn`; onnx is in the
# service extra too); a test keeps the two lists equal.
TRAINING_EXTRA_MODULES = ("torch", "torchvision", "onnx", "onnxscript", "tqdm", "sklearn")
SETUP_COMMAND = "make setup"


def missing_training_modules() -> list[str]:
    """The modules of the training extra that cannot be imported here, in extra order."""
    return [name for name in TRAINING_EXTRA_MODULES if importlib.util.find_spec(name) is None]


def require_training_extra(module: str) -> None:
    """Return when the training extra is installed. Otherwise, called as
    `require_training_extra(__name__)` from a module run as a command (`python -m ...`), log one
    ERROR line naming `make setup` and exit with status 2; imported as a library, raise
    ModuleNotFoundError with the same message."""
    missing = missing_training_modules()
    if not missing:
        return
    command = module
    if module == "__main__":
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        command = f"python -m {spec.name}" if spec is not None else "this command"
    message = (
        f"{command} needs the training extra, but {', '.join(missing)} "
        f"{'is' if len(missing) == 1 else 'are'} not installed in this environment "
        f"({sys.prefix}): run `{SETUP_COMMAND}`, which installs it (`make serve` installs the "
        "service only)"
    )
    if module != "__main__":
        raise ModuleNotFoundError(message, name=missing[0])
    setup_logging()
    logger.error("%s", message)
    raise SystemExit(USER_ERROR_EXIT_CODE)
