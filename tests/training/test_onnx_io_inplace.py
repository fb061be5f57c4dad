"""A feature map is its layer's own output, even where an in-place ReLU follows the layer (as in
torchvision's SqueezeNet, DenseNet, VGG and ResNet stems): exported, and as the parity reference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from training.onnx_check import ort_session, run_onnx
from training.onnx_io import FeatureMapModel, export_onnx, torch_outputs


class InPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv(x))
        x = torch.nn.functional.relu(self.bn(x), inplace=True)
        return self.head(x.mean(dim=(2, 3)))


def test_maps_before_an_in_place_relu_keep_their_negative_values(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = InPlace().eval()
    with torch.no_grad():
        model.bn.running_mean.fill_(1.0)  # negative values after the norm too
    images = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        conv = model.conv(images)
        norm = model.bn(torch.relu(conv))
    assert conv.min() < 0
    assert norm.min() < 0
    wrapper = FeatureMapModel(model, ["conv", "bn"])
    reference = torch_outputs(wrapper, images)
    np.testing.assert_allclose(reference["fm.conv"], conv.numpy(), atol=1e-6)
    np.testing.assert_allclose(reference["fm.bn"], norm.numpy(), atol=1e-6)
    path = tmp_path / "inplace.onnx"
    export_onnx(wrapper, images, path)
    got = run_onnx(ort_session(path), images.numpy(), ["logits", "fm.conv", "fm.bn"])
    np.testing.assert_allclose(got["fm.conv"], conv.numpy(), atol=1e-5)
    np.testing.assert_allclose(got["fm.bn"], norm.numpy(), atol=1e-5)
    np.testing.assert_allclose(got["logits"], reference["logits"], atol=1e-5)
