"""`python -m training.train`: train a registered CNN; best.pt, last.pt and metrics.jsonl in --out.

Launched by `torchrun --nproc-per-node N` it trains with DDP (gloo on CPU, nccl on CUDA): each rank
sees its shard of every epoch's shuffled data, rank 0 alone logs, writes metrics and checkpoints.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from training.requirements import require_training_extra

# ruff: noqa: E402 - the imports below come after this check on purpose
require_training_extra(__name__)  # before torch: one ERROR line naming `make setup`, no traceback

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, Subset

from training.checkpoint import load_checkpoint, preprocessing_of, save_checkpoint
from training.cli import command_logger, positive_int, run_cli
from training.data.datasets import (
    DatasetBundle,
    absolute_spec,
    load_dataset,
    subset,
    with_transform,
)
from training.data.transforms import (
    AUGMENT_PRESETS,
    Preprocessing,
    eval_transform,
    train_transform,
)
from training.distributed import DistInfo, barrier, init_distributed, shutdown
from training.engine import StepTools, evaluate, train_one_epoch
from training.errors import UserError
from training.models.adapt import SMALL_INPUT_MAX, is_small
from training.pretrained import (
    MISMATCHES_SHOWN,
    Pretrained,
    freeze,
    head_path,
    load_fitting,
    load_pretrained,
    shape_mismatches,
)
from training.registry import build_model, check_input_size, list_models, torchvision_names
from training.resume import (
    FIXED_ON_RESUME,
    check_data_folder,
    check_resumable,
    restore_schedule,
    resume_defaults,
)
from training.seeding import rng_state, seed_everything, set_rng_state

logger = command_logger(__name__, __spec__)
METRICS_FILE = "metrics.jsonl"
SCHEDULES = ("cosine", "onecycle", "constant")
OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class TrainConfig:
    arch: str = "lenet5"
    dataset: str = "fashion-mnist"
    out: Path = Path("runs/lenet5")
    data_dir: Path | None = None
    download: bool = False
    image_size: int | None = None
    color_mode: str | None = None  # imagefolder only; None: RGB
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 12
    batch_size: int = 128
    optimizer: str = "adamw"
    lr: float = 3e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "onecycle"
    label_smoothing: float = 0.0
    augment: str = "flip-crop"
    amp: bool = True
    seed: int = 0
    deterministic: bool = False
    resume: Path | None = None
    stop_after: int | None = None
    train_subset: int | None = None
    test_subset: int | None = None
    workers: int = 0
    threads: int | None = None
    device: str = "auto"
    weights: str | None = None
    freeze_backbone: bool = False
    trainable_layers: int | None = None


@dataclass(frozen=True)
class TrainResult:
    best_accuracy: float
    best_checkpoint: Path
    last_checkpoint: Path
    history: list[dict[str, Any]]


# Builder options that convserve sets itself, from the data and the other flags.
SET_BY_TRAINING = {
    "num_classes": "the labels",
    "in_channels": "--color-mode or the dataset",
    "image_size": "--image-size",
}


def _parse_kwarg(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key, json.loads(raw)
    except json.JSONDecodeError:
        return key, raw


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, prog="python -m training.train")
    d = TrainConfig()
    p.add_argument(
        "--list-archs",
        action="store_true",
        help="print the registered names and the torchvision classifiers, exit",
    )
    p.add_argument("--arch", default=d.arch, help="registry name or any torchvision classifier")
    p.add_argument(
        "--arch-kwarg",
        action="append",
        default=[],
        type=_parse_kwarg,
        metavar="KEY=VALUE",
        help="builder option, e.g. batch_norm=false (repeatable)",
    )
    p.add_argument(
        "--dataset", default=d.dataset, help="fashion-mnist | digits | cifar10 | imagefolder:<path>"
    )
    p.add_argument("--data-dir", type=Path, help="dataset files (default: the Debian path)")
    p.add_argument(
        "--download", action="store_true", help="allow downloading (fashion-mnist, cifar10)"
    )
    p.add_argument(
        "--image-size", type=positive_int, help="input side (default: the dataset's own)"
    )
    p.add_argument(
        "--color-mode",
        choices=("L", "RGB"),
        default=d.color_mode,
        help="imagefolder from scratch only: PIL mode images are converted to (default RGB)",
    )
    p.add_argument("--out", type=Path, default=d.out, help="folder for checkpoints and metrics")
    p.add_argument("--epochs", type=positive_int, default=d.epochs)
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help="per process")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer)
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate")
    p.add_argument("--momentum", type=float, default=d.momentum, help="sgd only")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--schedule", choices=SCHEDULES, default=d.schedule, help="per-step LR")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--augment", choices=AUGMENT_PRESETS, default=d.augment)
    p.add_argument("--no-amp", dest="amp", action="store_false", help="no AMP on CUDA")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--deterministic", action="store_true", help="torch.use_deterministic_algorithms(True)"
    )
    p.add_argument(
        "--resume",
        type=Path,
        help="continue from this last.pt, with its settings unless given here (--epochs N "
        "extends the run); its folder is the default --out",
    )
    p.add_argument("--stop-after", type=positive_int, help="end this run after N more epochs")
    p.add_argument("--train-subset", type=positive_int, help="train on a fixed random subset")
    p.add_argument("--test-subset", type=positive_int, help="evaluate on a fixed random subset")
    p.add_argument("--workers", type=int, default=d.workers, help="DataLoader workers")
    p.add_argument("--threads", type=positive_int, help="torch.set_num_threads (CPU)")
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda[:N]")
    tune = p.add_argument_group("fine-tuning from pretrained torchvision weights")
    tune.add_argument(
        "--weights",
        help="start from these weights: a state-dict file as torchvision publishes it or a "
        "weights name (ResNet18_Weights.IMAGENET1K_V1, DEFAULT) from the torch hub cache; the "
        "head is replaced for the dataset's classes, input size and normalisation follow the "
        "weights (--image-size overrides the size)",
    )
    frozen = tune.add_mutually_exclusive_group()
    frozen.add_argument("--freeze-backbone", action="store_true", help="train the new head only")
    frozen.add_argument(
        "--trainable-layers",
        type=int,
        metavar="N",
        help="train the head and the last N backbone blocks (0: the head only)",
    )
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = {k: v for k, v in vars(args).items() if k not in {"list_archs", "arch_kwarg"}}
    values["dataset"] = absolute_spec(values["dataset"])
    reserved = [key for key, _ in args.arch_kwarg if key in SET_BY_TRAINING]
    if reserved:
        key = reserved[0]
        raise UserError(f"--arch-kwarg {key}: it is set from {SET_BY_TRAINING[key]}")
    return TrainConfig(arch_kwargs=dict(args.arch_kwarg), **values)


def _device(cfg: TrainConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device: torch.device | None = torch.device(cfg.device)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {cfg.device!r}: expected auto, cpu or cuda[:N]")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {cfg.device}: torch finds no CUDA device here")
    return device


def _loaders(
    cfg: TrainConfig, data: DatasetBundle, info: DistInfo
) -> tuple[DataLoader[Any], DataLoader[Any], DistributedSampler[Any]]:
    pre = data.preprocessing
    train = subset(
        with_transform(data.train, train_transform(pre, cfg.augment, data.allow_flip)),
        cfg.train_subset,
        cfg.seed,
    )
    test = subset(with_transform(data.test, eval_transform(pre)), cfg.test_subset, cfg.seed)
    # The sampler shuffles with seed + epoch: each epoch's order is fixed, so resuming is exact.
    sampler: DistributedSampler[Any] = DistributedSampler(
        train, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=cfg.seed
    )
    shard = Subset(test, list(range(info.rank, len(test), info.world_size)))  # type: ignore[arg-type]
    common: dict[str, Any] = {"num_workers": cfg.workers, "pin_memory": _device(cfg).type == "cuda"}
    return (
        DataLoader(train, batch_size=cfg.batch_size, sampler=sampler, **common),
        DataLoader(shard, batch_size=max(cfg.batch_size, 256), **common),
        sampler,
    )


def _optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    parameters = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            parameters,
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.momentum > 0,
        )
    return torch.optim.AdamW(parameters, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _scheduler(
    cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler:
    total = max(1, cfg.epochs * steps_per_epoch)
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def _plain_config(cfg: TrainConfig) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()}


def check_config(cfg: TrainConfig) -> None:
    """UserError, before any data is read, for a setting torch would refuse with a traceback
    (some only after the data has loaded), and for a run that would overwrite another;
    `--device` is checked by `_device`, which `main` calls next."""
    if cfg.epochs < 1:
        raise UserError("--epochs must be at least 1")
    if cfg.weights is None and (cfg.freeze_backbone or cfg.trainable_layers is not None):
        raise UserError("--freeze-backbone and --trainable-layers go with --weights")
    if cfg.trainable_layers is not None and cfg.trainable_layers < 0:
        raise UserError("--trainable-layers must be 0 or more")
    if not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise UserError(f"--lr must be a positive number, got {cfg.lr}")
    for flag, value in (("--momentum", cfg.momentum), ("--weight-decay", cfg.weight_decay)):
        if not (math.isfinite(value) and value >= 0):
            raise UserError(f"{flag} must be a number >= 0, got {value}")
    if not 0 <= cfg.label_smoothing <= 1:
        raise UserError(f"--label-smoothing must be between 0 and 1, got {cfg.label_smoothing}")
    if cfg.workers < 0:
        raise UserError(f"--workers must be 0 or more, got {cfg.workers}")
    if cfg.out.exists() and not cfg.out.is_dir():
        raise UserError(f"--out {cfg.out} is a file, not a folder")
    last = cfg.out / "last.pt"
    if cfg.resume is None and last.exists():
        raise UserError(
            f"--out {cfg.out} holds a run already: continue it with --resume {last}, or train "
            "into another --out (or remove that folder)"
        )


def main(cfg: TrainConfig) -> TrainResult:
    """Train per `cfg`; returns the best test accuracy and the checkpoint paths."""
    check_config(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = _device(cfg)
    info = init_distributed(device)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    try:
        return _train(cfg, device, info)
    finally:
        shutdown(info)


@dataclass
class _Progress:
    epoch: int = 0
    best: float = -1.0
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


def _resume(
    cfg: TrainConfig,
    state: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    steps_per_epoch: int,
) -> tuple[_Progress, torch.optim.lr_scheduler.LRScheduler]:
    """Restore weights, optimizer, scaler and RNG states; the LR schedule as it was, or, when
    this run's --epochs, batch size, --lr or --schedule changes it, this run's schedule,
    advanced to the steps already taken (`restore_schedule`)."""
    model.load_state_dict(state["model"])
    scheduler = _scheduler(cfg, optimizer, steps_per_epoch)
    restore_schedule(
        scheduler,
        optimizer,
        state,
        cfg.epochs * steps_per_epoch,
        steps_per_epoch,
        lr=cfg.lr,
        schedule=cfg.schedule,
        weight_decay=cfg.weight_decay,
    )
    scaler.load_state_dict(state["scaler"])
    set_rng_state(state["rng"])
    logger.info("resumed from %s after epoch %d", cfg.resume, state["epoch"])
    progress = _Progress(
        state["epoch"], state["best_metric"], state["best_epoch"], list(state["history"])
    )
    return progress, scheduler


def _train(cfg: TrainConfig, device: torch.device, info: DistInfo) -> TrainResult:
    # Ranks differ in augmentation randomness; the data order comes from the sampler's seed.
    seed_everything(cfg.seed + info.rank, deterministic=cfg.deterministic)
    if cfg.resume is not None:
        check_data_folder(cfg.dataset)
    data = load_dataset(
        cfg.dataset,
        cfg.data_dir,
        download=cfg.download,
        image_size=cfg.image_size,
        color_mode=cfg.color_mode or "RGB",
    )
    state = None if cfg.resume is None else load_checkpoint(cfg.resume)
    # Fine-tuning: the weights' preprocessing (a resumed run has it in its checkpoint).
    pretrained = None
    if cfg.weights is not None and state is None:
        pretrained = load_pretrained(cfg.arch, cfg.weights, download=cfg.download)
        data = replace(data, preprocessing=_pretrained_preprocessing(cfg, pretrained))
    elif cfg.weights is not None and state is not None:
        data = replace(data, preprocessing=preprocessing_of(state))
    pre = data.preprocessing
    if cfg.color_mode is not None and cfg.color_mode != pre.color_mode:
        what = "the weights take" if cfg.weights is not None else f"{cfg.dataset} images are"
        raise UserError(
            f"--color-mode {cfg.color_mode}: {what} {pre.color_mode} (--color-mode is for "
            "imagefolder datasets trained from scratch)"
        )
    if state is not None and cfg.resume is not None:
        given = {k: getattr(cfg, k) for k in FIXED_ON_RESUME}
        check_resumable(given, cfg.resume, state, pre, data.labels)
    arch_kwargs = {**(pretrained.arch_kwargs if pretrained else {}), **cfg.arch_kwargs}
    model = build_model(cfg.arch, len(data.labels), pre.channels, pre.center_crop, **arch_kwargs)
    check_input_size(model, cfg.arch, pre.channels, pre.center_crop)
    if cfg.weights is not None:
        _start_from_weights(cfg, model, pretrained, len(data.labels), info)
    model = model.to(device)
    train_loader, test_loader, sampler = _loaders(cfg, data, info)
    optimizer = _optimizer(cfg, model)
    amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    progress = _Progress()
    if state is None:
        scheduler = _scheduler(cfg, optimizer, len(train_loader))
    else:
        progress, scheduler = _resume(cfg, state, model, optimizer, scaler, len(train_loader))
    start_epoch, best, best_epoch, history = (
        progress.epoch,
        progress.best,
        progress.best_epoch,
        progress.history,
    )
    net: nn.Module = DistributedDataParallel(model) if info.enabled else model
    tools = StepTools(
        optimizer,
        scheduler,
        scaler,
        nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing),
        device,
        amp,
    )
    end_epoch = (
        cfg.epochs if cfg.stop_after is None else min(cfg.epochs, start_epoch + cfg.stop_after)
    )
    if info.is_main:
        logger.info(
            "%s on %s: %d train / %d test images, %d steps per epoch, device %s x%d",
            cfg.arch,
            cfg.dataset,
            len(sampler.dataset),  # type: ignore[arg-type]
            len(test_loader.dataset.dataset),  # type: ignore[attr-defined] # the unsharded set
            len(train_loader),
            device,
            info.world_size,
        )
    out = cfg.out
    if cfg.resume is not None and info.is_main:
        carry_run_files(cfg.resume.parent, out)
    pretrained_source = pretrained.source if pretrained else (state or {}).get("pretrained")
    if start_epoch >= cfg.epochs and info.is_main:
        logger.warning(
            "%s has trained %d of %d epochs already: nothing to do (a larger --epochs "
            "continues it)",
            cfg.resume, start_epoch, cfg.epochs,
        )  # fmt: skip
    for epoch in range(start_epoch, end_epoch):
        started = time.perf_counter()
        sampler.set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr}
        row |= train_one_epoch(net, train_loader, tools, info, f"epoch {epoch + 1}/{cfg.epochs}")
        report, test_loss = evaluate(
            model, test_loader, len(data.labels), device, info, tools.criterion
        )
        row |= {
            "test_loss": test_loss,
            "test_accuracy": report.accuracy,
            "time_s": round(time.perf_counter() - started, 2),
        }
        history.append(row)
        improved = report.accuracy > best
        if improved:
            best, best_epoch = report.accuracy, epoch + 1
        if info.is_main:
            logger.info(
                "epoch %d/%d train loss %.4f acc %.4f | test loss %.4f acc %.4f | %.1fs",
                epoch + 1,
                cfg.epochs,
                row["train_loss"],
                row["train_accuracy"],
                test_loss,
                report.accuracy,
                row["time_s"],
            )
            content = {
                "arch": cfg.arch,
                "arch_kwargs": arch_kwargs,
                "dataset": cfg.dataset,
                "labels": list(data.labels),
                "preprocessing": pre.to_dict(),
                "num_classes": len(data.labels),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "epoch": epoch + 1,
                "best_metric": best,
                "best_epoch": best_epoch,
                "history": history,
                "rng": rng_state(),
                "torch_version": str(torch.__version__),
                "config": _plain_config(cfg),
                **({"pretrained": pretrained_source} if pretrained_source else {}),
            }
            save_checkpoint(out / "last.pt", content)
            if improved:
                save_checkpoint(out / "best.pt", content)
            with (out / METRICS_FILE).open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
        barrier(info)
    return TrainResult(best, out / "best.pt", out / "last.pt", history)


def carry_run_files(source: Path, out: Path) -> None:
    """A run resumed into another --out takes its best.pt and metrics.jsonl along, so the new
    folder holds the whole run: the best epoch so far (which a worse new epoch would otherwise
    leave nowhere in it) and every epoch's row."""
    if out.resolve() == source.resolve():
        return
    out.mkdir(parents=True, exist_ok=True)
    for name in ("best.pt", METRICS_FILE):
        if (source / name).is_file() and not (out / name).exists():
            shutil.copy2(source / name, out / name)
            logger.info("copied %s from %s into %s", name, source, out)


def _pretrained_preprocessing(cfg: TrainConfig, pretrained: Pretrained) -> Preprocessing:
    """The weights' preprocessing, at --image-size when given."""
    pre = pretrained.preprocessing
    if cfg.image_size is None or cfg.image_size == pre.center_crop:
        return pre
    return pre.for_size(cfg.image_size)


def _start_from_weights(
    cfg: TrainConfig,
    model: nn.Module,
    pretrained: Pretrained | None,
    num_classes: int,
    info: DistInfo,
) -> None:
    """Every weight but the head's from the file (a resumed run has them in its checkpoint),
    then the freezing that --freeze-backbone / --trainable-layers ask for."""
    head = head_path(model)
    if pretrained is not None:
        size = cfg.image_size
        mismatched = shape_mismatches(model, pretrained.state_dict, (f"{head}.",))
        if size is not None and is_small(size) and mismatched:
            raise UserError(
                f"--image-size {size} is below {SMALL_INPUT_MAX}: {cfg.arch}'s stem is rebuilt "
                "for such small images, so the pretrained weights no longer fit it (shape: "
                f"{', '.join(mismatched[:MISMATCHES_SHOWN])}); use --image-size "
                f"{SMALL_INPUT_MAX} or more: images are resized to it"
            )
        load_fitting(model, pretrained, head=head)
    blocks = 0 if cfg.freeze_backbone else cfg.trainable_layers
    trainable = freeze(model, head, blocks)
    if info.is_main and pretrained is not None:
        logger.info(
            "fine-tuning %s from %s: head %s replaced for %d classes, %.1fM of %.1fM "
            "parameters train",
            cfg.arch,
            pretrained.source["name"] or pretrained.source["file"],
            head,
            num_classes,
            trainable / 1e6,
            sum(p.numel() for p in model.parameters()) / 1e6,
        )


def cli(argv: list[str] | None = None) -> None:
    args = resume_defaults(get_args_parser(), argv)
    if args.list_archs:
        others = sorted(torchvision_names() - set(list_models()))
        sys.stdout.write("\n".join(list_models()) + "\n")
        sys.stdout.write("# any torchvision classifier as well:\n" + "\n".join(others) + "\n")
        return
    main(config_from_args(args))


if __name__ == "__main__":
    sys.exit(run_cli(cli))
