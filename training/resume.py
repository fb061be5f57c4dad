"""Resuming a training run: the checkpoint's settings as the command line's defaults, the
settings that cannot change, and the LR schedule carried over or re-spanned."""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path
from typing import Any

import torch

from training.checkpoint import load_checkpoint
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


def check_resumable(
    given: dict[str, Any], path: Path, state: dict[str, Any], pre: Preprocessing
) -> None:
    """UserError naming every setting in `given` (FIXED_ON_RESUME) that differs from the
    checkpoint's, and an input size or colour mode that does."""
    saved = {**(state.get("config") or {}), "arch": state["arch"], "dataset": state["dataset"]}
    saved["arch_kwargs"] = state["arch_kwargs"]
    differ = [
        f"{k} {value!r} (checkpoint: {saved[k]!r})"
        for k, value in given.items()
        if k in saved and value != saved[k]
    ]
    if state["preprocessing"] != pre.to_dict():
        differ.append("input size or colour mode (--image-size, --color-mode)")
    if differ:
        raise UserError(
            f"cannot resume {path} with other settings: {'; '.join(differ)}. Leave them out to "
            "take the checkpoint's, or start a new run in another --out"
        )


def restore_schedule(
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    total_steps: int,
    steps_per_epoch: int,
) -> None:
    """Load the optimizer's state and carry the LR schedule over: as it was when its length is
    unchanged (an exact resume), else `scheduler` (fresh, `total_steps` long: a longer --epochs
    or another batch size) advanced to the steps already taken."""
    saved = state["scheduler"]
    saved_total = saved.get("total_steps", saved.get("T_max"))
    respan = saved_total is not None and saved_total != total_steps
    if respan:
        done = state["epoch"] * steps_per_epoch
        with warnings.catch_warnings():  # stepping the schedule with no optimizer step
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(min(done, total_steps)):
                scheduler.step()
        logger.info(
            "LR schedule now spans %d steps, was %d: continued at step %d",
            total_steps, saved_total, done,
        )  # fmt: skip
    optimizer.load_state_dict(state["optimizer"])  # moments, and the LR the run had reached
    if respan:
        for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr(), strict=True):
            group["lr"] = lr
    else:
        scheduler.load_state_dict(saved)
