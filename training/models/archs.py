"""The registered torchvision architectures, each adapted to small inputs and channel counts.

On images smaller than `SMALL_INPUT_MAX` (28×28 Fashion-MNIST, 32×32 CIFAR-10) the stem becomes a
3×3 stride-1 conv (ResNet also drops its stem max pool), pools that would shrink the map below 1×1
become identities, and AlexNet/VGG average-pool to 1×1 before a 512-wide MLP head instead of a
7×7 map before a 4096-wide one (100M parameters for a 28×28 image).
"""

from __future__ import annotations

from typing import Any

import torchvision
from torch import nn

from training.models.adapt import (
    SMALL_HEAD_WIDTH,
    drop_excess_pools,
    is_small,
    pool_positions,
    set_in_channels,
    small_mlp_head,
    small_stem,
)
from training.registry import CamSource, register_model


def _features(model: nn.Module) -> nn.Sequential:
    features = model.get_submodule("features")
    assert isinstance(features, nn.Sequential)
    return features


def _last_conv_channels(features: nn.Sequential) -> int:
    return [m for m in features.modules() if isinstance(m, nn.Conv2d)][-1].out_channels


def _mlp_net(
    name: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    head_width: int | None,
    **kwargs: Any,
) -> nn.Module:
    model: nn.Module = torchvision.models.get_model(
        name, weights=None, num_classes=num_classes, **kwargs
    )
    features = _features(model)
    if is_small(image_size):
        small_stem(model, "features.0", in_channels)
        drop_excess_pools(features, image_size)
        small_mlp_head(
            model, _last_conv_channels(features), num_classes, head_width or SMALL_HEAD_WIDTH
        )
    else:
        set_in_channels(model, in_channels, "features.0")
        if head_width is not None:
            small_mlp_head(model, _last_conv_channels(features), num_classes, head_width)
    return model


def _block_layers(model: nn.Module) -> list[str]:
    """Each conv block's last activation and its max pool (the pool alone where it became an
    identity on a small input: the activation would be the same map twice)."""
    features = _features(model)
    layers = []
    last_relu = None
    for name, module in features.named_children():
        if isinstance(module, nn.ReLU):
            last_relu = f"features.{name}"
        elif isinstance(module, nn.MaxPool2d) and last_relu is not None:
            layers.append(last_relu)
    pools = pool_positions(features)
    return sorted(layers + pools, key=lambda path: int(path.rsplit(".", 1)[1]))


def _register_mlp_net(name: str) -> None:
    def build(
        num_classes: int,
        in_channels: int = 3,
        image_size: int = 224,
        head_width: int | None = None,
        **kwargs: Any,
    ) -> nn.Module:
        return _mlp_net(name, num_classes, in_channels, image_size, head_width, **kwargs)

    register_model(name, feature_layers=_block_layers)(build)


def _resnet_layers(model: nn.Module) -> list[str]:
    return ["relu", "layer1", "layer2", "layer3", "layer4"]


def _resnet_cam(model: nn.Module) -> CamSource:
    fc = model.get_submodule("fc")
    assert isinstance(fc, nn.Linear)
    return CamSource("layer4", fc.weight.detach())


def _register_resnet(name: str) -> None:
    def build(
        num_classes: int, in_channels: int = 3, image_size: int = 224, **kwargs: Any
    ) -> nn.Module:
        model: nn.Module = torchvision.models.get_model(
            name, weights=None, num_classes=num_classes, **kwargs
        )
        if is_small(image_size):
            small_stem(model, "conv1", in_channels)
            model.maxpool = nn.Identity()
        else:
            set_in_channels(model, in_channels, "conv1")
        return model

    register_model(name, feature_layers=_resnet_layers, cam=_resnet_cam)(build)


def _stage_layers(model: nn.Module) -> list[str]:
    return [f"features.{n}" for n, _ in _features(model).named_children()]


def _efficientnet_cam(model: nn.Module) -> CamSource:
    linear = model.get_submodule("classifier.1")
    assert isinstance(linear, nn.Linear)
    return CamSource(f"features.{len(_features(model)) - 1}", linear.weight.detach())


@register_model("efficientnet_b0", feature_layers=_stage_layers, cam=_efficientnet_cam)
def efficientnet_b0(
    num_classes: int, in_channels: int = 3, image_size: int = 224, **kwargs: Any
) -> nn.Module:
    model: nn.Module = torchvision.models.efficientnet_b0(
        weights=None, num_classes=num_classes, **kwargs
    )
    stem = "features.0.0"
    if is_small(image_size):
        conv = model.get_submodule(stem)
        assert isinstance(conv, nn.Conv2d)
        conv.stride = (1, 1)
    set_in_channels(model, in_channels, stem)
    return model


def _convnext_cam(model: nn.Module) -> CamSource:
    # Head: LayerNorm2d → Flatten → Linear. Folding the norm's scale into the weights gives
    # the usual CAM approximation (the per-image normalisation is not a linear map).
    norm = model.get_submodule("classifier.0")
    linear = model.get_submodule("classifier.2")
    assert isinstance(norm, nn.LayerNorm)
    assert isinstance(linear, nn.Linear)
    weights = linear.weight.detach() * norm.weight.detach()[None, :]
    return CamSource(f"features.{len(_features(model)) - 1}", weights)


@register_model("convnext_tiny", feature_layers=_stage_layers, cam=_convnext_cam)
def convnext_tiny(
    num_classes: int, in_channels: int = 3, image_size: int = 224, **kwargs: Any
) -> nn.Module:
    model: nn.Module = torchvision.models.convnext_tiny(
        weights=None, num_classes=num_classes, **kwargs
    )
    stem = "features.0.0"
    if is_small(image_size):
        small_stem(model, stem, in_channels)
    else:
        set_in_channels(model, in_channels, stem)
    return model


for _name in (
    "alexnet",
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "vgg11_bn",
    "vgg13_bn",
    "vgg16_bn",
    "vgg19_bn",
):
    _register_mlp_net(_name)
for _name in ("resnet18", "resnet50", "resnet152"):
    _register_resnet(_name)
