"""Publishing a version folder into the model repository: staged in a hidden folder beside
it, moved into place only when complete, and on failure nothing new left behind (the staging
folder goes, and so do the model and repository folders this export created; existing folders
and versions stay). Also the folder's file names and metadata.json writing. No torch."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from service.metadata import NAME_PATTERN, is_valid_name, parse_version
from training.errors import UserError

PUBLISHED_DIR_MODE = 0o755  # mkdtemp makes 0700; the service may run as another user
MODEL_FILE = "model.onnx"
METADATA_FILE = "metadata.json"
CAM_FILE = "cam_weights.npy"
DEFAULT_MAX_BATCH_SIZE = 64  # metadata max_batch_size unless --max-batch-size says otherwise


def check_name(name: str) -> None:
    if not is_valid_name(name):
        raise UserError(f"bad model name {name!r}: must match {NAME_PATTERN}")


def next_version(model_root: Path) -> int:
    """One more than the highest version folder (the service's rule for what a version folder
    is: ASCII digits, at least 1); 1 for a new model."""
    versions = [parse_version(p.name) for p in model_root.glob("*") if p.is_dir()]
    return max((v for v in versions if v is not None), default=0) + 1


def write_metadata(folder: Path, metadata: dict[str, Any]) -> None:
    text = json.dumps({k: v for k, v in metadata.items() if v is not None}, indent=2)
    (folder / METADATA_FILE).write_text(text + "\n", encoding="utf-8")


@contextmanager
def publishing(
    repository: Path, name: str, version: int, force: bool
) -> Iterator[tuple[Path, Path]]:
    """(staging folder to fill, the version folder it becomes when the block ends cleanly);
    an existing version is replaced only with `force`."""
    check_repository(repository, name)
    model_root = repository / name
    target = model_root / str(version)
    if target.exists() and not force:
        raise UserError(f"{target} already exists; pass --force to overwrite it")
    created = _missing_folders(model_root)
    published = False
    try:
        try:
            model_root.mkdir(parents=True, exist_ok=True)
        except OSError as err:  # e.g. a file on the way, no permission
            raise UserError(f"cannot create {model_root}: {err}") from err
        staging = Path(tempfile.mkdtemp(prefix=f".staging-{version}-", dir=model_root))
        try:
            yield staging, target
            staging.chmod(PUBLISHED_DIR_MODE)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
            published = True
        finally:
            if staging.exists():
                shutil.rmtree(staging)
    finally:
        if not published:
            _remove_if_empty(created)


def check_repository(repository: Path, name: str) -> None:
    """<repository>/<name> must be, or be creatable as, a folder (not a file on the way)."""
    for path in (repository / name, *(repository / name).parents):
        if path.exists():
            if not path.is_dir():
                what = "--repository" if path == repository else "path"
                raise UserError(f"{what} {path} is not a directory")
            return


def _missing_folders(path: Path) -> list[Path]:
    """`path` and its ancestors that do not exist yet, deepest first."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    return missing


def _remove_if_empty(folders: list[Path]) -> None:
    """Remove the folders this export created (deepest first) unless something else is in them."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (another export wrote into it) or already gone
            return
