"""Classification metrics from a confusion matrix (rows: true class, columns: predicted)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


def confusion_matrix(
    targets: torch.Tensor, predictions: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts."""
    flat = targets.to(torch.int64) * num_classes + predictions.to(torch.int64)
    return torch.bincount(flat, minlength=num_classes**2).reshape(num_classes, num_classes)


@dataclass(frozen=True)
class ClassificationReport:
    confusion: torch.Tensor

    @property
    def total(self) -> int:
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        return float(self.confusion.diagonal().sum()) / max(1, self.total)

    def per_class_accuracy(self) -> list[float | None]:
        """Each class's accuracy; None for a class with no images in the evaluated set."""
        support = self.confusion.sum(dim=1)
        correct = self.confusion.diagonal()
        return [
            float(c) / float(n) if n else None
            for c, n in zip(correct.tolist(), support.tolist(), strict=True)
        ]

    def to_dict(self, labels: tuple[str, ...] | list[str]) -> dict[str, Any]:
        return {
            "samples": self.total,
            "accuracy": self.accuracy,
            "per_class_accuracy": dict(zip(labels, self.per_class_accuracy(), strict=True)),
            "confusion_matrix": self.confusion.tolist(),
            "labels": list(labels),
        }

    def format_table(self, labels: tuple[str, ...] | list[str]) -> str:
        """Human-readable accuracy, per-class accuracy and confusion matrix."""
        width = max(len(lb) for lb in labels)
        lines = [f"accuracy {self.accuracy:.4f} on {self.total} images", "per-class accuracy:"]
        lines += [
            f"  {lb:<{width}}  " + ("n/a (no images)" if acc is None else f"{acc:.4f}")
            for lb, acc in zip(labels, self.per_class_accuracy(), strict=True)
        ]
        lines.append("confusion matrix (rows true, columns predicted):")
        for lb, row in zip(labels, self.confusion.tolist(), strict=True):
            lines.append(f"  {lb:<{width}} " + " ".join(f"{v:5d}" for v in row))
        return "\n".join(lines)
