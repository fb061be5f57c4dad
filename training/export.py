"""`python -m training.export`: a training checkpoint or pretrained torchvision weights →
models/<name>/<version>/ (the repository format: docs/repository.md).

`--checkpoint run/best.pt` exports a convserve training run; `--arch resnet50 --weights
PATH_OR_NAME` exports torchvision's network with pretrained weights (training/pretrained.py:
labels and preprocessing from the weights' own metadata, parity checked on real photos).
Writes model.onnx (dynamic batch, `logits` plus `fm.<layer>` feature maps), metadata.json, the
first conv layer's filter grid and, for GAP + linear heads, cam_weights.npy. It first checks ONNX
Runtime against PyTorch on real test images and refuses to write when any output differs by more
than 1e-4 (relative to max(1, max|torch|)). A version is staged in a hidden folder and moved into
place only when complete; an existing version is replaced only with --force. With --fp16 the
graph computes in float16 (inputs and outputs stay float32) and the tolerance is 1e-2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.requirements import require_training_extra

# ruff: noqa: E402 - the imports below come after this check on purpose
require_training_extra(__name__)  # before torch: one ERROR line naming `make setup`, no traceback

import torch
from torch import nn

from training.artifacts import sha256_of, write_cam_weights, write_filters
from training.checkpoint import load_checkpoint, model_from_checkpoint, preprocessing_of
from training.cli import positive_int, run_cli
from training.data.datasets import DatasetBundle, subset, with_transform
from training.data.photos import photo_views
from training.data.transforms import Preprocessing, eval_transform
from training.errors import UserError
from training.evaluate import (
    dataset_spec,
    evaluate_module,
    evaluate_onnx,
    load_matching_dataset,
    split_loader,
)
from training.export_fp16 import FP16_PARITY_TOLERANCE, Precision, convert_to_float16
from training.onnx_check import (
    INPUT_NAME,
    LOGITS_NAME,
    PARITY_TOLERANCE,
    ort_session,
    output_name,
    parity_errors,
    run_onnx,
)
from training.onnx_io import (
    FeatureMapModel,
    check_feature_map_shapes,
    check_layers,
    export_onnx,
    first_conv,
    torch_outputs,
)
from training.pretrained import build_pretrained, load_pretrained
from training.publish import (
    CAM_FILE,
    MODEL_FILE,
    NAME_PATTERN,
    check_name,
    check_repository,
    next_version,
    publishing,
    write_metadata,
)
from training.registry import get_spec

logger = logging.getLogger(__name__)
DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_PARITY_SAMPLES = 32


@dataclass(frozen=True)
class ExportSpec:
    """What goes into one version folder, independent of where the model came from."""

    name: str
    version: int
    arch: str
    labels: list[str]
    preprocessing: Preprocessing
    layers: list[str]
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    training: dict[str, Any] = field(default_factory=dict)
    precision: Precision = "float32"
    tolerance: float | None = None  # None: the precision's (1e-4 float32, 1e-2 float16)
    source: dict[str, Any] | None = None  # metadata `source`: where the weights came from

    @property
    def parity_tolerance(self) -> float:
        if self.tolerance is not None:
            return self.tolerance
        return FP16_PARITY_TOLERANCE if self.precision == "float16" else PARITY_TOLERANCE


def resolve_layers(model: nn.Module, arch: str, choice: str) -> list[str]:
    """`default` (the arch's conv blocks), `none`, `all` (every conv and pool), or a list."""
    if choice == "default":
        layers = get_spec(arch).feature_layers(model)
    elif choice == "none":
        layers = []
    elif choice == "all":
        kinds = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
        layers = [n for n, m in model.named_modules() if n and isinstance(m, kinds)]
    else:
        layers = [layer.strip() for layer in choice.split(",") if layer.strip()]
    check_layers(model, layers)
    return layers


def write_version(
    model: nn.Module, spec: ExportSpec, samples: torch.Tensor, folder: Path
) -> dict[str, Any]:
    """Export into the empty `folder`, verify parity, write the artifacts; returns metadata.

    `samples` (N ≥ 2, C, H, W) are real preprocessed images. Raises `UserError` on parity failure
    (the caller discards the folder).
    """
    model = model.eval()
    check_feature_map_shapes(model, spec.layers, samples)
    wrapper = FeatureMapModel(model, spec.layers)
    onnx_path = folder / MODEL_FILE
    opset = export_onnx(wrapper, samples, onnx_path)
    if spec.precision == "float16":
        convert_to_float16(onnx_path)
    reference = torch_outputs(wrapper, samples)
    session = ort_session(onnx_path)
    errors = parity_errors(reference, run_onnx(session, samples.numpy()))
    single = parity_errors(
        torch_outputs(wrapper, samples[:1]), run_onnx(session, samples[:1].numpy())
    )
    worst = {name: max(errors[name], single[name]) for name in errors}
    figure = max(worst.values())
    tolerance = spec.parity_tolerance
    if not figure <= tolerance:  # also catches NaN
        bad = {n: f"{e:.2e}" for n, e in worst.items() if not e <= tolerance}
        raise UserError(
            f"ONNX parity check failed ({spec.precision}, tolerance {tolerance:g}): {bad}"
        )
    logger.info("parity (%s): max error %.2e over %d outputs", spec.precision, figure, len(worst))
    metadata: dict[str, Any] = {
        "schema_version": 1,
        "name": spec.name,
        "version": spec.version,
        "architecture": spec.arch,
        "input": {
            "name": INPUT_NAME,
            "shape": list(samples.shape[1:]),
            "dtype": "float32",
            "color_mode": spec.preprocessing.color_mode,
        },
        "preprocessing": {
            k: v for k, v in spec.preprocessing.to_dict().items() if k != "color_mode"
        },
        "output": {"name": LOGITS_NAME},
        "feature_maps": [
            {
                "layer": layer,
                "output": output_name(layer),
                "shape": list(reference[output_name(layer)].shape[1:]),
            }
            for layer in spec.layers
        ],
        "cam": None,
        "filters": [write_filters(*first_conv(model), folder)],
        "labels": list(spec.labels),
        "max_batch_size": spec.max_batch_size,
        "training": dict(spec.training),
        "source": spec.source,
        "export": {
            "opset": opset,
            "torch": torch.__version__.split("+")[0],
            "precision": spec.precision,
            "parity_tolerance": tolerance,
            "parity_max_abs_diff": figure,
            "parity_per_output": worst,
            "parity_samples": int(samples.shape[0]),
            "sha256": sha256_of(onnx_path),
        },
    }
    cam = get_spec(spec.arch).cam
    if cam is not None:
        source = cam(model)
        if source.layer in spec.layers:
            write_cam_weights(source.weights.detach().float().numpy(), folder / CAM_FILE)
            metadata["cam"] = {"feature_map": output_name(source.layer), "weights": CAM_FILE}
    write_metadata(folder, metadata)
    return metadata


def stage_and_publish(
    model: nn.Module,
    spec: ExportSpec,
    samples: torch.Tensor,
    repository: Path,
    force: bool,
    after_write: Callable[[Path, dict[str, Any]], None] | None = None,
) -> Path:
    """Write the version in a hidden staging folder, then move it to <repo>/<name>/<version>
    (training/publish.py: on failure nothing new is left behind)."""
    check_name(spec.name)
    with publishing(repository, spec.name, spec.version, force) as (staging, target):
        metadata = write_version(model, spec, samples, staging)
        if after_write is not None:
            after_write(staging, metadata)
    return target


@dataclass(frozen=True)
class ExportConfig:
    name: str
    checkpoint: Path | None = None
    weights: str | None = None
    arch: str | None = None
    labels: str | None = None
    download: bool = False
    repository: Path = Path("models")
    version: int | None = None
    force: bool = False
    feature_maps: str = "default"
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    parity_samples: int = DEFAULT_PARITY_SAMPLES
    data_dir: Path | None = None
    dataset: str | None = None
    evaluate: bool = True
    threads: int | None = None
    fp16: bool = False


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, prog="python -m training.export")
    d = ExportConfig("")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="a training run's best.pt or last.pt")
    source.add_argument(
        "--weights",
        help="pretrained torchvision weights (with --arch): a state-dict file as torchvision "
        "publishes it, or a weights name such as ResNet50_Weights.IMAGENET1K_V2, IMAGENET1K_V2 "
        "or DEFAULT, read from the torch hub cache",
    )
    p.add_argument("--arch", help="--weights only: the torchvision architecture, e.g. resnet50")
    p.add_argument(
        "--labels",
        help="--weights only: imagenet | a file of one label per line (default: the weights' "
        "own categories)",
    )
    p.add_argument(
        "--download",
        action="store_true",
        help="--weights NAME only: download the file into the torch hub cache when missing",
    )
    p.add_argument("--name", required=True, help=f"model name, {NAME_PATTERN}")
    p.add_argument("--repository", type=Path, default=d.repository)
    p.add_argument("--version", type=positive_int, help="default: one above the highest existing")
    p.add_argument("--force", action="store_true", help="overwrite an existing version")
    p.add_argument(
        "--feature-maps",
        default=d.feature_maps,
        help="default | none | all | comma-separated module paths",
    )
    p.add_argument(
        "--max-batch-size",
        type=positive_int,
        default=d.max_batch_size,
        help="largest batch the service sends the model",
    )
    p.add_argument(
        "--parity-samples",
        type=positive_int,
        default=d.parity_samples,
        help="real images the ONNX-vs-PyTorch check runs on (at least 2)",
    )
    p.add_argument(
        "--dataset",
        help="--checkpoint only: dataset spec replacing the checkpoint's for parity samples and "
        "evaluation, e.g. imagefolder:<path> when the image tree moved; its labels must be the "
        "checkpoint's",
    )
    p.add_argument(
        "--data-dir", type=Path, help="dataset files for parity/evaluation (fashion-mnist, cifar10)"
    )
    p.add_argument(
        "--no-evaluate",
        dest="evaluate",
        action="store_false",
        help="skip measuring test accuracy through ONNX Runtime",
    )
    p.add_argument("--threads", type=positive_int, help="torch / ORT intra-op threads")
    p.add_argument(
        "--fp16",
        action="store_true",
        help="float16 weights and compute for GPUs (inputs and outputs stay float32); "
        "parity tolerance 1e-2 instead of 1e-4",
    )
    return p


def check_config(cfg: ExportConfig) -> None:
    check_name(cfg.name)
    if (cfg.checkpoint is None) == (cfg.weights is None):
        raise UserError("pass one of --checkpoint and --weights")
    if cfg.weights is not None and cfg.arch is None:
        raise UserError("--weights needs --arch (the torchvision architecture, e.g. resnet50)")
    if cfg.checkpoint is not None:
        given = [f for f in ("arch", "labels") if getattr(cfg, f) is not None]
        given += ["download"] if cfg.download else []
        if given:
            flags = ", ".join(f"--{f}" for f in given)
            raise UserError(f"{flags} go with --weights; a checkpoint records its own")
    if cfg.weights is not None and (cfg.dataset is not None or cfg.data_dir is not None):
        raise UserError("--dataset and --data-dir go with --checkpoint")
    if cfg.version is not None and cfg.version < 1:
        raise UserError("--version must be at least 1")
    if cfg.max_batch_size < 1:
        raise UserError("--max-batch-size must be at least 1")
    if cfg.parity_samples < 2:
        raise UserError("--parity-samples must be at least 2")
    check_repository(cfg.repository, cfg.name)


def main(cfg: ExportConfig) -> Path:
    """Export the checkpoint or the pretrained weights; returns the version folder written."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    check_config(cfg)
    if cfg.weights is not None:
        return export_pretrained(cfg)
    assert cfg.checkpoint is not None
    content = load_checkpoint(cfg.checkpoint)
    model = model_from_checkpoint(content)
    pre = preprocessing_of(content)
    labels = list(content["labels"])
    dataset = dataset_spec(content["dataset"], cfg.dataset, f"checkpoint {cfg.checkpoint}")
    data = load_matching_dataset(dataset, pre, labels, cfg.data_dir)
    loader = split_loader(data, pre)
    samples = parity_samples(data, pre, cfg.parity_samples)
    config = content.get("config", {})
    training = {
        "dataset": content["dataset"],
        **({"evaluation_dataset": dataset} if dataset != content["dataset"] else {}),
        "epochs": content["epoch"],
        "best_epoch": content.get("best_epoch"),
        "arch_kwargs": content["arch_kwargs"],
        "train_time_s": round(sum(row.get("time_s", 0.0) for row in content.get("history", []))),
        **({"pretrained": content["pretrained"]} if "pretrained" in content else {}),
        **{
            k: config[k]
            for k in (
                "optimizer",
                "lr",
                "schedule",
                "label_smoothing",
                "augment",
                "batch_size",
                "seed",
            )
            if k in config
        },
    }
    spec = ExportSpec(
        name=cfg.name,
        version=cfg.version or next_version(cfg.repository / cfg.name),
        arch=content["arch"],
        labels=labels,
        preprocessing=pre,
        layers=resolve_layers(model, content["arch"], cfg.feature_maps),
        max_batch_size=cfg.max_batch_size,
        training=training,
        precision="float16" if cfg.fp16 else "float32",
        source={
            "kind": "training",
            "file": cfg.checkpoint.name,
            "sha256": sha256_of(cfg.checkpoint),
        },
    )

    def measure(folder: Path, metadata: dict[str, Any]) -> None:
        if not cfg.evaluate:
            return
        onnx_report = evaluate_onnx(
            ort_session(folder / MODEL_FILE, cfg.threads), loader, len(labels)
        )
        torch_report = evaluate_module(model, loader, len(labels))
        metadata["training"] |= {
            "test_accuracy": round(onnx_report.accuracy, 4),
            "test_accuracy_torch": round(torch_report.accuracy, 4),
            "test_samples": onnx_report.total,
        }
        logger.info(
            "test accuracy: onnxruntime %.4f, pytorch %.4f on %d images",
            onnx_report.accuracy,
            torch_report.accuracy,
            onnx_report.total,
        )
        write_metadata(folder, metadata)

    target = stage_and_publish(model, spec, samples, cfg.repository, cfg.force, measure)
    logger.info("wrote %s", target)
    return target


def export_pretrained(cfg: ExportConfig) -> Path:
    """`--arch A --weights W`: torchvision's network with W, parity-checked on real photos."""
    assert cfg.arch is not None
    assert cfg.weights is not None
    pretrained = load_pretrained(cfg.arch, cfg.weights, cfg.labels, cfg.download)
    model = build_pretrained(pretrained)
    pre = pretrained.preprocessing
    transform = eval_transform(pre)
    samples = torch.stack([transform(view) for view in photo_views(cfg.parity_samples)])
    spec = ExportSpec(
        name=cfg.name,
        version=cfg.version or next_version(cfg.repository / cfg.name),
        arch=cfg.arch,
        labels=pretrained.labels,
        preprocessing=pre,
        layers=resolve_layers(model, cfg.arch, cfg.feature_maps),
        max_batch_size=cfg.max_batch_size,
        training={"arch_kwargs": pretrained.arch_kwargs} if pretrained.arch_kwargs else {},
        precision="float16" if cfg.fp16 else "float32",
        source=pretrained.source,
    )
    target = stage_and_publish(model, spec, samples, cfg.repository, cfg.force)
    logger.info("wrote %s", target)
    return target


def parity_samples(data: DatasetBundle, pre: Preprocessing, count: int) -> torch.Tensor:
    """(N, C, H, W) real images for the parity check: `count` from the test split, topped up
    from the train split when the test split is smaller (a tiny image tree's 10% test split)."""
    transform = eval_transform(pre)
    test = subset(with_transform(data.test, transform), count)
    images = [test[i][0] for i in range(len(test))]  # type: ignore[arg-type]
    if len(images) < count:
        train = subset(with_transform(data.train, transform), count - len(images))
        images += [train[i][0] for i in range(len(train))]  # type: ignore[arg-type]
    if len(images) < 2:
        raise UserError(
            f"dataset {data.name} has {len(images)} image(s); the ONNX parity check needs at "
            "least 2"
        )
    return torch.stack(images)


def cli(argv: list[str] | None = None) -> None:
    main(ExportConfig(**vars(get_args_parser().parse_args(argv))))


if __name__ == "__main__":
    sys.exit(run_cli(cli))
