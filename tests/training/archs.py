"""The architectures the training side must offer by name."""

from __future__ import annotations

REQUIRED = {
    "lenet5", "alexnet", "vgg16", "vgg19", "resnet18", "resnet50", "resnet152",
    "efficientnet_b0", "convnext_tiny",
}  # fmt: skip
