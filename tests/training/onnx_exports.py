"""ONNX files as other tools write them (torch.onnx's TorchScript and dynamo exporters) of a
ResNet-18 and a tiny CNN, to be imported."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torchvision
from torch import nn

RESNET_INPUT = (3, 224, 224)
# Stem (the activation before the max-pool halves 112 to 56), then the output of each stage.
RESNET_MAPS = {
    "relu": (64, 112, 112),
    "layer1.1.relu_1": (64, 56, 56),
    "layer2.1.relu_1": (128, 28, 28),
    "layer3.1.relu_1": (256, 14, 14),
    "layer4.1.relu_1": (512, 7, 7),
}
TINY_SIZE = 32
TINY_CLASSES = 10


def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18().eval()


def torchscript_export(
    model: nn.Module, path: Path, sample: torch.Tensor, **options: object
) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings of the legacy exporter
        torch.onnx.export(model, (sample,), str(path), dynamo=False, **options)  # type: ignore[arg-type]
    return path


def dynamo_export(model: nn.Module, path: Path, sample: torch.Tensor) -> Path:
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (sample,), dynamo=True, dynamic_shapes={"x": {0: batch}}, verbose=False
        )
    assert program is not None
    program.save(str(path), external_data=False)
    return path


def resnet_export(kind: str, path: Path) -> Path:
    model = resnet18()
    if kind == "torchscript":
        return torchscript_export(
            model,
            path,
            torch.randn(2, *RESNET_INPUT),
            output_names=["output"],
            dynamic_axes={"input.1": {0: "batch"}, "output": {0: "batch"}},
        )
    if kind == "dynamo":
        return dynamo_export(model, path, torch.randn(2, *RESNET_INPUT))
    return torchscript_export(model, path, torch.randn(1, *RESNET_INPUT))


class TinyCNN(nn.Module):
    """conv → relu → max-pool → conv → relu → mean over H, W → linear; `batch_of_one` flattens
    with reshape(1, -1), which only a batch of one survives."""

    def __init__(self, channels: int = 3, batch_of_one: bool = False, depth: int = 0) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 8, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.deep = nn.Sequential(
            *(m for _ in range(depth) for m in (nn.Conv2d(8, 8, 1), nn.ReLU()))
        )
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.fc = nn.Linear(16, TINY_CLASSES)
        self.batch_of_one = batch_of_one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.deep(self.pool(self.relu(self.conv1(x))))
        x = self.relu2(self.conv2(x)).mean((2, 3))
        return self.fc(x.reshape(1, -1) if self.batch_of_one else torch.flatten(x, 1))


def tiny_export(
    path: Path,
    *,
    batch: int = 2,
    channels: int = 3,
    batch_of_one: bool = False,
    depth: int = 0,
    **options: object,
) -> Path:
    torch.manual_seed(1)
    model = TinyCNN(channels, batch_of_one, depth).eval()
    sample = torch.randn(batch, channels, TINY_SIZE, TINY_SIZE)
    return torchscript_export(model, path, sample, **options)


def dynamic_batch() -> dict[str, object]:
    return {"output_names": ["output"], "dynamic_axes": {"input.1": {0: "n"}, "output": {0: "n"}}}


def write_labels(path: Path, count: int) -> Path:
    path.write_text("".join(f"class-{i}\n" for i in range(count)), encoding="utf-8")
    return path
