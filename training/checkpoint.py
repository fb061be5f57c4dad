"""Checkpoints: one `.pt` file holding everything a run needs (docs/training.md, Training),
readable with `weights_only=True`.

Keys: format, arch, arch_kwargs, num_classes, labels, preprocessing, dataset, model, optimizer,
scheduler, scaler, epoch (completed epochs), best_metric, best_epoch, history, rng, torch_version,
config. Values are tensors and plain Python types only: no numpy, dataclass or Namespace objects.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.data.transforms import Preprocessing
from training.errors import UserError
from training.registry import build_model

CHECKPOINT_FORMAT = 1
# Lines of torch.load's errors that advise rather than explain (e.g. to unpickle untrusted code).
# What torch's weights-only unpickler names when a file holds more than tensors.
PICKLED_OBJECT = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
TORCH_ADVICE = ("Weights only load failed", "In PyTorch", "Please file an issue", "Re-running")
REQUIRED_KEYS = ("format", "arch", "arch_kwargs", "labels", "preprocessing", "model", "epoch")


def save_checkpoint(path: Path, content: dict[str, Any]) -> None:
    """Write atomically: a temp file in the same folder, then `os.replace`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save({"format": CHECKPOINT_FORMAT, **content}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict[str, Any]:
    if path.is_dir():
        hint = " (pass its last.pt or best.pt)" if (path / "last.pt").is_file() else ""
        raise UserError(f"checkpoint {path} is a folder, not a .pt file{hint}")
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any file: the unpickler raises KeyError and more
        raise UserError(
            f"{path} is not a checkpoint written by training.train, or it is damaged "
            f"({describe_load_error(err)})"
        ) from err
    if not isinstance(content, dict) or any(k not in content for k in REQUIRED_KEYS):
        raise UserError(f"{path} is not a convserve checkpoint (missing {REQUIRED_KEYS})")
    if content["format"] != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: checkpoint format {content['format']} is not supported")
    return content


def describe_load_error(err: Exception) -> str:
    """One short line: the object the file pickles beside its tensors (never unpickled), else
    the error's first line, not torch's advice to unpickle untrusted code."""
    pickled = PICKLED_OBJECT.search(str(err))
    if pickled:
        return f"it holds a pickled {pickled.group(1)}, which is never unpickled: tensors only"
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    refused = bool(lines) and lines[0].startswith(TORCH_ADVICE)  # weights_only said why
    if isinstance(err, KeyError | EOFError) or (
        isinstance(err, pickle.UnpicklingError) and not refused
    ):  # what the unpickler meets in a text file, or any other file not written by torch.save
        return "not a file that torch.save wrote"
    first = next((ln for ln in lines if not ln.startswith(TORCH_ADVICE)), "")
    if not first:
        return type(err).__name__
    sentence = first.split(". ", 1)[0].rstrip(".")  # torch's advice follows the first sentence
    return f"{type(err).__name__}: {sentence[:160]}"


def model_from_checkpoint(content: dict[str, Any]) -> nn.Module:
    """Rebuild the network from its arch name and kwargs and load its weights (eval mode)."""
    pre = preprocessing_of(content)
    model = build_model(
        content["arch"],
        num_classes=len(content["labels"]),
        in_channels=pre.channels,
        image_size=pre.center_crop,
        **content["arch_kwargs"],
    )
    model.load_state_dict(content["model"])
    return model.eval()


def preprocessing_of(content: dict[str, Any]) -> Preprocessing:
    return Preprocessing.from_dict(content["preprocessing"])
