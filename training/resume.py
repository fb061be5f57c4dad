"""Resuming a training run: the checkpoint's settings as the command line's defaults, the
settings that cannot change, and the LR schedule carried over or re-spanned."""

from __future__ import annotations

import argparse
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from training.checkpoint import load_checkpoint
from training.data.datasets import IMAGEFOLDER_PREFIX
from training.data.transforms import Preprocessing
from training.errors import UserError

logger = logging.getLogger(__name__)
# What a checkpoint's run was trained with, taken as the defaults when resuming it; the rest
# (where the data is, threads, device, how many epochs this run may do) is this run's.
RESUMED_SETTINGS = (
    "arch", "dataset", "image_size", "color_mode", "epochs", "batch_size", "optimizer", "lr",
    "momentum", "weight_decay", "schedule", "label_smoothing", "augment", "amp", "seed",
    "deterministic", "train_subset", "test_subset", "weights", "freeze_backbone",
    "trainable_layers",
)  # fmt: skip
# Settings a resumed run cannot change: they shape the weights or the optimizer's state.
FIXED_ON_RESUME = (
    "arch", "dataset", "arch_kwargs", "optimizer", "weights", "freeze_backbone",
    "trainable_layers", "image_size", "color_mode",
)  # fmt: skip


def resume_defaults(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Arguments parsed with the checkpoint's settings as defaults, when `--resume` is given:
    `--resume runs/x/last.pt` alone continues that run as it was configured, in its folder."""
    args = parser.parse_args(argv)
    if args.resume is None:
        return args
    state = load_checkpoint(args.resume)
    saved: dict[str, Any] = state.get("config") or {}
    parser.set_defaults(
        out=args.resume.parent, **{k: saved[k] for k in RESUMED_SETTINGS if k in saved}
    )
    args = parser.parse_args(argv)
    if not args.arch_kwarg:
        args.arch_kwarg = list(state["arch_kwargs"].items())
    return args


def moved(saved: str, given: str) -> bool:
    """Both image folders: the same data may have moved (its classes are checked once read)."""
    return saved.startswith(IMAGEFOLDER_PREFIX) and given.startswith(IMAGEFOLDER_PREFIX)


def check_data_folder(dataset: str) -> None:
    """An image folder that is gone: say how to resume with the folder where it is now."""
    folder = dataset.removeprefix(IMAGEFOLDER_PREFIX)
    if dataset.startswith(IMAGEFOLDER_PREFIX) and not Path(folder).is_dir():
        raise UserError(
            f"the run's image folder {folder} is not there any more: resume with --dataset "
            "imagefolder:PATH naming where its class folders are now"
        )


def check_resumable(
    given: dict[str, Any],
    path: Path,
    state: dict[str, Any],
    pre: Preprocessing,
    labels: Sequence[str],
) -> None:
    """UserError naming every setting in `given` (FIXED_ON_RESUME) that differs from the
    checkpoint's, an input size or colour mode that does, and data (`labels`: its classes, in
    order) of other classes than the checkpoint's."""
    saved = {**(state.get("config") or {}), "arch": state["arch"], "dataset": state["dataset"]}
    saved["arch_kwargs"] = state["arch_kwargs"]
    differ = [
        f"{k} {value!r} (checkpoint: {saved[k]!r})"
        for k, value in given.items()
        if k in saved and value != saved[k] and not (k == "dataset" and moved(saved[k], value))
    ]
    if state["preprocessing"] != pre.to_dict():
        differ.append("input size or colour mode (--image-size, --color-mode)")
    if list(labels) != list(state["labels"]):
        differ.append(
            f"{given.get('dataset', 'the data')} has classes {', '.join(labels)}; the checkpoint "
            f"was trained on {', '.join(state['labels'])}"
        )
    if differ:
        raise UserError(
            f"cannot resume {path} with other settings: {'; '.join(differ)}. Leave them out to "
            "take the checkpoint's, or start a new run in another --out"
        )


# Keys a scheduler keeps in the optimizer's param groups (OneCycleLR's peak and ends, the
# schedules' starting LR): a rebuilt schedule's, not the checkpoint's.
SCHEDULE_GROUP_KEYS = ("initial_lr", "max_lr", "min_lr", "base_momentum", "max_momentum")


def restore_schedule(
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    total_steps: int,
    steps_per_epoch: int,
    *,
    lr: float,
    schedule: str,
    weight_decay: float,
) -> None:
    """Load the optimizer's state and carry the LR schedule over: as it was when nothing about
    it changed (an exact resume), else `scheduler` (fresh: this run's --lr and --schedule,
    `total_steps` long) advanced to the steps already taken. A longer --epochs or another batch
    size changes its length; --lr or --schedule given beside --resume change the rest. The
    weight decay is this run's either way."""
    saved = state["scheduler"]
    saved_config = state.get("config") or {}
    saved_total = saved.get("total_steps", saved.get("T_max"))
    changed = [
        f"{key} {saved_config[key]!r} -> {value!r}"
        for key, value in (("lr", lr), ("schedule", schedule))
        if key in saved_config and saved_config[key] != value
    ]
    if saved_total is not None and saved_total != total_steps:
        changed.append(f"{saved_total} -> {total_steps} steps")
    done = state["epoch"] * steps_per_epoch
    if changed and done < total_steps:
        with warnings.catch_warnings():  # stepping the schedule with no optimizer step
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(done):
                scheduler.step()
        logger.info("LR schedule rebuilt (%s): continued at step %d", ", ".join(changed), done)
    fresh = [{k: g[k] for k in SCHEDULE_GROUP_KEYS if k in g} for g in optimizer.param_groups]
    optimizer.load_state_dict(state["optimizer"])  # moments, and the LR the run had reached
    if changed:
        for group, keys, last in zip(
            optimizer.param_groups, fresh, scheduler.get_last_lr(), strict=True
        ):
            for key in SCHEDULE_GROUP_KEYS:
                group.pop(key, None)
            group.update(keys, lr=last)
    else:
        scheduler.load_state_dict(saved)
    for group in optimizer.param_groups:
        group["weight_decay"] = weight_decay
