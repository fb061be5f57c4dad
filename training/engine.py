"""One training epoch and one evaluation pass: tqdm per batch, sums all-reduced under DDP."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from training.distributed import DistInfo, all_reduce_sum
from training.metrics import ClassificationReport, confusion_matrix

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class StepTools:
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    device: torch.device
    amp: bool


def _autocast(device: torch.device, amp: bool) -> AbstractContextManager[Any]:
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return nullcontext()


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[Batch],
    tools: StepTools,
    info: DistInfo,
    description: str,
) -> dict[str, float]:
    """Loss and accuracy over the epoch's training batches (all ranks)."""
    model.train()
    sums = torch.zeros(3, dtype=torch.float64)  # loss sum, correct, samples
    for images, targets in tqdm(loader, desc=description, disable=not info.is_main, leave=False):
        images = images.to(tools.device, non_blocking=True)
        targets = targets.to(tools.device, non_blocking=True)
        with _autocast(tools.device, tools.amp):
            logits = model(images)
            loss = tools.criterion(logits, targets)
        tools.optimizer.zero_grad(set_to_none=True)
        tools.scaler.scale(loss).backward()
        tools.scaler.step(tools.optimizer)
        tools.scaler.update()
        tools.scheduler.step()
        n = targets.numel()
        sums += torch.tensor(
            [float(loss.detach()) * n, float((logits.argmax(1) == targets).sum()), n],
            dtype=torch.float64,
        )
    sums = all_reduce_sum(sums, info)
    return {"train_loss": float(sums[0] / sums[2]), "train_accuracy": float(sums[1] / sums[2])}


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Batch],
    num_classes: int,
    device: torch.device,
    info: DistInfo,
    criterion: nn.Module | None = None,
) -> tuple[ClassificationReport, float]:
    """Confusion matrix and mean loss over this rank's shard, summed over all ranks."""
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    loss_sum = torch.zeros(1, dtype=torch.float64)
    for images, targets in tqdm(loader, desc="eval", disable=not info.is_main, leave=False):
        logits = model(images.to(device)).float().cpu()
        if criterion is not None:
            loss_sum += float(criterion(logits, targets)) * targets.numel()
        confusion += confusion_matrix(targets, logits.argmax(1), num_classes)
    confusion = all_reduce_sum(confusion, info)
    loss_sum = all_reduce_sum(loss_sum, info)
    report = ClassificationReport(confusion)
    return report, float(loss_sum[0]) / max(1, report.total)
