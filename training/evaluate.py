"""`python -m training.evaluate`: accuracy, per-class accuracy and confusion matrix of a checkpoint
(PyTorch) or of a repository version (ONNX Runtime), on the test split through the service's
preprocessing, so the two can be compared image for image.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.requirements import require_training_extra

# ruff: noqa: E402 - the imports below come after this check on purpose
require_training_extra(__name__)  # before torch: one ERROR line naming `make setup`, no traceback

import numpy as np
import onnxruntime as ort
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from training.checkpoint import load_checkpoint, model_from_checkpoint, preprocessing_of
from training.cli import command_logger, positive_int, run_cli
from training.data.datasets import (
    IMAGEFOLDER_PREFIX,
    DatasetBundle,
    load_dataset,
    subset,
    with_transform,
)
from training.data.transforms import Preprocessing, eval_transform
from training.distributed import DistInfo
from training.engine import evaluate as evaluate_torch
from training.errors import UserError
from training.metrics import ClassificationReport, confusion_matrix
from training.onnx_check import LOGITS_NAME, ort_session, run_onnx
from training.publish import METADATA_FILE, MODEL_FILE

logger = command_logger(__name__, __spec__)
DEFAULT_BATCH_SIZE = 256


@dataclass(frozen=True)
class EvalConfig:
    checkpoint: Path | None = None
    model_dir: Path | None = None
    dataset: str | None = None
    data_dir: Path | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    limit: int | None = None
    json_out: Path | None = None
    threads: int | None = None


def dataset_spec(recorded: str, override: str | None, origin: str) -> str:
    """The dataset to read: `override` (--dataset) if given, else `recorded` (the one `origin`,
    a checkpoint or metadata.json, was trained on).

    A recorded `imagefolder:` path may be relative to the folder training ran in; when it is not
    found from here, say so (and how to point at the data) instead of "not a directory".
    """
    if override is not None:
        return override
    folder = recorded.removeprefix(IMAGEFOLDER_PREFIX)
    if recorded.startswith(IMAGEFOLDER_PREFIX) and folder.strip():
        path = Path(folder)
        if not path.is_absolute() and not path.is_dir():
            raise UserError(
                f"{origin} was trained on {recorded!r}, a relative path not found from "
                f"{Path.cwd()} (tried {Path.cwd() / path}): run from the folder training ran "
                f"in, or pass --dataset {IMAGEFOLDER_PREFIX}<path to the image tree>"
            )
    return recorded


def load_matching_dataset(
    spec: str, pre: Preprocessing, labels: Sequence[str], data_dir: Path | None = None
) -> DatasetBundle:
    """Dataset `spec` at the model's input size; its labels must be the model's `labels`."""
    data = load_dataset(spec, data_dir, image_size=pre.center_crop, color_mode=pre.color_mode)
    if list(data.labels) != list(labels):
        raise UserError(
            f"dataset {spec!r} has labels {_first_labels(data.labels)} but the model has "
            f"{_first_labels(labels)}: evaluate it on the dataset it was trained for"
        )
    return data


def _first_labels(labels: Sequence[str], count: int = 5) -> str:
    shown = ", ".join(labels[:count]) + (", ..." if len(labels) > count else "")
    return f"[{shown}] ({len(labels)})"


def split_loader(
    data: DatasetBundle,
    pre: Preprocessing,
    limit: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> DataLoader[Any]:
    """The test split (or a fixed subset) through the eval transform of `pre`, in order."""
    test = subset(with_transform(data.test, eval_transform(pre)), limit)
    return DataLoader(test, batch_size=batch_size, shuffle=False)


def evaluate_onnx(
    session: ort.InferenceSession, loader: DataLoader[Any], num_classes: int
) -> ClassificationReport:
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for images, targets in tqdm(loader, desc="onnxruntime", leave=False):
        logits = run_onnx(session, images.numpy(), [LOGITS_NAME])[LOGITS_NAME]
        confusion += confusion_matrix(
            targets, torch.from_numpy(np.argmax(logits, axis=1)), num_classes
        )
    return ClassificationReport(confusion)


def evaluate_module(
    model: nn.Module, loader: DataLoader[Any], num_classes: int
) -> ClassificationReport:
    report, _ = evaluate_torch(model, loader, num_classes, torch.device("cpu"), DistInfo())
    return report


def read_metadata(model_dir: Path) -> dict[str, Any]:
    path = model_dir / METADATA_FILE
    if not path.is_file() or not (model_dir / MODEL_FILE).is_file():
        raise UserError(
            f"{model_dir} is not a model version folder (needs {MODEL_FILE}, {METADATA_FILE})"
        )
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: invalid JSON: {err}") from err
    return data


def preprocessing_from_metadata(meta: dict[str, Any]) -> Preprocessing:
    return Preprocessing.from_dict(
        {**meta["preprocessing"], "color_mode": meta["input"]["color_mode"]}
    )


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, prog="python -m training.evaluate")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a best.pt/last.pt (PyTorch)")
    source.add_argument("--model-dir", type=Path, help="models/<name>/<version> (ONNX Runtime)")
    p.add_argument(
        "--dataset",
        help="dataset spec replacing the recorded one (default: the one it was trained on), "
        "e.g. imagefolder:<path> when the image tree moved; its labels must be the model's",
    )
    p.add_argument("--data-dir", type=Path, help="dataset files (fashion-mnist, cifar10)")
    p.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE)
    p.add_argument("--limit", type=positive_int, help="evaluate a fixed random subset of this size")
    p.add_argument("--json", dest="json_out", type=Path, help="also write the report as JSON")
    p.add_argument("--threads", type=positive_int, help="torch / ORT intra-op threads")
    return p


def check_counts(cfg: EvalConfig) -> None:
    """What argparse checks, for callers of `main` (tests, scripts)."""
    for option, value in (
        ("--batch-size", cfg.batch_size),
        ("--limit", cfg.limit),
        ("--threads", cfg.threads),
    ):
        if value is not None and value < 1:
            raise UserError(f"{option} must be at least 1, got {value}")


def main(cfg: EvalConfig) -> dict[str, Any]:
    """Evaluate; returns the JSON report (accuracy, per-class accuracy, confusion matrix)."""
    check_counts(cfg)
    if cfg.json_out is not None and not cfg.json_out.parent.is_dir():
        raise UserError(f"--json {cfg.json_out}: {cfg.json_out.parent} is not a folder")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.checkpoint is not None:
        content = load_checkpoint(cfg.checkpoint)
        pre, labels = preprocessing_of(content), list(content["labels"])
        spec = dataset_spec(content["dataset"], cfg.dataset, f"checkpoint {cfg.checkpoint}")
        data = load_matching_dataset(spec, pre, labels, cfg.data_dir)
        loader = split_loader(data, pre, cfg.limit, cfg.batch_size)
        report = evaluate_module(model_from_checkpoint(content), loader, len(labels))
        source = {"checkpoint": str(cfg.checkpoint), "runtime": "pytorch"}
    elif cfg.model_dir is not None:
        meta = read_metadata(cfg.model_dir)
        pre, labels = preprocessing_from_metadata(meta), list(meta["labels"])
        # export records where it evaluated when --dataset replaced the checkpoint's
        trained = meta.get("training", {})
        recorded = trained.get("evaluation_dataset") or trained.get("dataset")
        if not recorded and cfg.dataset is None:
            raise UserError(f"{cfg.model_dir}: metadata names no dataset; pass --dataset")
        spec = dataset_spec(recorded or "", cfg.dataset, f"{cfg.model_dir / METADATA_FILE}")
        data = load_matching_dataset(spec, pre, labels, cfg.data_dir)
        loader = split_loader(data, pre, cfg.limit, cfg.batch_size)
        session = ort_session(cfg.model_dir / MODEL_FILE, cfg.threads)
        report = evaluate_onnx(session, loader, len(labels))
        source = {"model_dir": str(cfg.model_dir), "runtime": "onnxruntime"}
    else:
        raise UserError("pass --checkpoint or --model-dir")
    result = {**source, **report.to_dict(labels)}
    sys.stdout.write(report.format_table(labels) + "\n")
    if cfg.json_out is not None:
        try:
            cfg.json_out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        except OSError as err:
            raise UserError(f"cannot write --json {cfg.json_out}: {err.strerror or err}") from err
    return result


def cli(argv: list[str] | None = None) -> None:
    main(EvalConfig(**vars(get_args_parser().parse_args(argv))))


if __name__ == "__main__":
    sys.exit(run_cli(cli))
