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
graph computes in float16 (inputs and outputs stay float32) and the tolerance is 1e-2. With --int8
the parity-checked float32 graph is statically quantized (training/export_int8.py), calibrated on
the training split (or --calibration-data), and written only when it agrees with float32 on
held-out images (the test split; for --weights, images disjoint from the calibration ones).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.requirements import require_training_extra

# ruff: noqa: E402 - the imports below come after this check on purpose
require_training_extra(__name__)  # before torch: one ERROR line naming `make setup`, no traceback

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from service.metadata import NAME_PATTERN
from training.artifacts import sha256_of, write_cam_weights, write_filters
from training.checkpoint import load_checkpoint, model_from_checkpoint, preprocessing_of
from training.cli import command_logger, positive_int, run_cli
from training.data.datasets import DatasetBundle, image_paths, subset, with_transform
from training.data.photos import PHOTO_NAMES, photo_views, sample_photo
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
from training.export_int8 import (
    CALIBRATION_BATCH_SIZE,
    DEFAULT_CALIBRATION_IMAGES,
    DEFAULT_EVALUATION_IMAGES,
    Comparison,
    Images,
    Int8Plan,
    Labels,
    add_int8_arguments,
    check_int8_options,
    fallback_notice,
    folder_split,
    photo_split,
    plan_from_sets,
    quantize_version,
)
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
    DEFAULT_MAX_BATCH_SIZE,
    MODEL_FILE,
    check_name,
    check_repository,
    next_version,
    publishing,
    write_metadata,
)
from training.registry import get_spec

logger = command_logger(__name__, __spec__)
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
    """`default` (the arch's conv blocks), `none` (logits only: no CAM either), `all` (every
    conv and pool, and the default blocks), or a list; but for `none`, the layer the CAM is
    computed on is added where it is missing (as `training.import_onnx` does), with a line
    saying so."""
    spec = get_spec(arch)
    if choice == "default":
        layers = spec.feature_layers(model)
    elif choice == "none":
        layers = []
    elif choice == "all":
        kinds = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
        wanted = set(spec.feature_layers(model))
        layers = [
            n for n, m in model.named_modules() if n and (isinstance(m, kinds) or n in wanted)
        ]
    else:
        layers = [layer.strip() for layer in choice.split(",") if layer.strip()]
    check_layers(model, layers)
    cam_layer = None if spec.cam is None else spec.cam(model).layer
    if cam_layer is not None and cam_layer not in layers and choice != "none":
        layers.append(cam_layer)
        logger.info("feature map %s added: the CAM is computed on it", cam_layer)
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
    int8: bool = False
    calibration: int = DEFAULT_CALIBRATION_IMAGES
    calibration_data: str | None = None
    gate_images: int | None = None
    accept_accuracy_loss: bool = False


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
    add_int8_arguments(
        p,
        gate="top-1 agreement with float32 is at least 99%% and test accuracy drops at most 1 "
        "percentage point on held-out images",
        data="imagefolder:PATH to calibrate on (default: the checkpoint's training split; for "
        "--weights, crops of the bundled photos); for --weights the gate compares on other "
        "images of PATH (PATH/val or PATH/test when PATH/train exists)",
        gate_images="the whole test split; for --weights all of PATH/val, else "
        f"{DEFAULT_EVALUATION_IMAGES}",
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
    if cfg.int8 and cfg.fp16:
        raise UserError("pass one of --fp16 and --int8")
    check_int8_options(
        cfg.int8, cfg.calibration, cfg.calibration_data, cfg.gate_images, cfg.accept_accuracy_loss
    )
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

    plan = checkpoint_int8_plan(cfg, data, pre, loader) if cfg.int8 else None

    def measure(folder: Path, metadata: dict[str, Any]) -> None:
        compared = None
        if plan is not None:
            compared = quantize_staged(folder, metadata, plan, samples)
        if not cfg.evaluate:
            return
        if compared is not None and compared.accuracy_int8 is not None and not cfg.gate_images:
            onnx_accuracy, onnx_total = compared.accuracy_int8, compared.images  # the test split
        else:
            onnx_report = evaluate_onnx(
                ort_session(folder / MODEL_FILE, cfg.threads), loader, len(labels)
            )
            onnx_accuracy, onnx_total = onnx_report.accuracy, onnx_report.total
        torch_report = evaluate_module(model, loader, len(labels))
        metadata["training"] |= {
            "test_accuracy": round(onnx_accuracy, 4),
            "test_accuracy_torch": round(torch_report.accuracy, 4),
            "test_samples": onnx_total,
        }
        logger.info(
            "test accuracy: onnxruntime %.4f, pytorch %.4f on %d images",
            onnx_accuracy,
            torch_report.accuracy,
            onnx_total,
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
    after_write = None
    if cfg.int8:
        if cfg.calibration_data is not None:
            calibration, held_out = folder_split(
                cfg.calibration_data, cfg.calibration, cfg.gate_images, spec.labels
            )
        else:
            fallback_notice()
            photos = [sample_photo(name) for name in PHOTO_NAMES]
            calibration, held_out = photo_split(photos, cfg.calibration, cfg.gate_images)

        def preprocess(image: Image.Image) -> Images:
            return transform(image).numpy()  # type: ignore[no-any-return]

        plan = plan_from_sets(
            calibration, held_out, preprocess, cfg.accept_accuracy_loss, cfg.threads
        )

        def after_write(folder: Path, metadata: dict[str, Any]) -> None:
            quantize_staged(folder, metadata, plan, samples)

    target = stage_and_publish(model, spec, samples, cfg.repository, cfg.force, after_write)
    logger.info("wrote %s", target)
    return target


def checkpoint_int8_plan(
    cfg: ExportConfig, data: DatasetBundle, pre: Preprocessing, test: DataLoader[Any]
) -> Int8Plan:
    """--int8 of a checkpoint: calibrated on a fixed random subset of the training split (or
    --calibration-data), judged on the test split (`test`, or --gate-images of it) with its
    labels."""
    transform = eval_transform(pre)
    if cfg.calibration_data is not None:
        held_out_files = image_paths(data.test)  # never calibrated on
        images, _ = folder_split(
            cfg.calibration_data, cfg.calibration, 0, data.labels, exclude=held_out_files
        )
        calibration: Any = [(transform(images.image(i)), -1) for i in range(len(images))]
        source = images.description
    else:
        calibration = subset(with_transform(data.train, transform), cfg.calibration)
        source = f"{data.name} training split, a fixed random subset"
    loader = DataLoader(calibration, batch_size=CALIBRATION_BATCH_SIZE, shuffle=False)

    def calibrate() -> Iterator[Images]:
        return (batch.numpy() for batch, _ in loader)

    held_out = test
    what = f"{data.name} test split"
    if cfg.gate_images is not None:
        held_out = split_loader(data, pre, cfg.gate_images)
        what += ", a fixed random subset"

    def evaluate() -> Iterator[tuple[Images, Labels]]:
        return ((x.numpy(), y.numpy().astype(np.int64)) for x, y in held_out)

    return Int8Plan(
        calibration=calibrate,
        calibration_count=len(calibration),
        calibration_source=source,
        evaluation=evaluate,
        evaluation_source=what,
        evaluation_count=len(held_out.dataset),  # type: ignore[arg-type]
        accept_accuracy_loss=cfg.accept_accuracy_loss,
        threads=cfg.threads,
    )


def quantize_staged(
    folder: Path, metadata: dict[str, Any], plan: Int8Plan, samples: torch.Tensor
) -> Comparison:
    """--int8: replace the staged float32 model.onnx by its int8 graph (training/export_int8.py)
    and record it in metadata.json; raises `UserError` when the accuracy gate refuses."""
    export = metadata["export"]
    changes, comparison = quantize_version(
        folder, MODEL_FILE, samples.numpy(), plan, export["parity_max_abs_diff"]
    )
    export |= {**changes, "sha256": sha256_of(folder / MODEL_FILE)}
    write_metadata(folder, metadata)
    return comparison


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
