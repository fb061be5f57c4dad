"""The model registry: `register_model` fills one table at import, `build_model` is the lookup.

Each entry knows how to build the network for (num_classes, in_channels, image_size), which layers
are its conv blocks (the default feature maps exported to ONNX) and, for global-average-pool +
linear heads, where its class-activation-map weights are. Any torchvision classifier that is not
registered here is built by name through `torchvision.models.get_model` (see `models/adapt.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from training.errors import UserError

Builder = Callable[..., nn.Module]
LayerLister = Callable[[nn.Module], list[str]]
CamLocator = Callable[[nn.Module], "CamSource"]


@dataclass(frozen=True)
class CamSource:
    """Where CAM comes from: the feature-map layer and the (num_classes, C) weights."""

    layer: str
    weights: torch.Tensor


@dataclass(frozen=True)
class ArchSpec:
    name: str
    build: Builder
    feature_layers: LayerLister
    cam: CamLocator | None = None
    native_size: int = 224


_REGISTRY: dict[str, ArchSpec] = {}


def register_model(
    name: str,
    *,
    feature_layers: LayerLister,
    cam: CamLocator | None = None,
    native_size: int = 224,
) -> Callable[[Builder], Builder]:
    """Decorator registering `build(num_classes, in_channels, image_size, **kwargs)` as `name`."""

    def decorator(build: Builder) -> Builder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ArchSpec(name, build, feature_layers, cam, native_size)
        return build

    return decorator


def _load_builtin() -> None:
    # Importing the package registers the built-in architectures exactly once.
    import training.models  # noqa: F401


def list_models() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def torchvision_names() -> frozenset[str]:
    """The torchvision classifiers `build_model` takes by name besides the registered ones."""
    from training.models.adapt import torchvision_classifiers

    return torchvision_classifiers()


def get_spec(name: str) -> ArchSpec:
    """The registry entry of `name`, or a generic entry for another torchvision classifier."""
    _load_builtin()
    if name in _REGISTRY:
        return _REGISTRY[name]
    from training.models.adapt import torchvision_classifiers, torchvision_spec

    if name in torchvision_classifiers():
        return torchvision_spec(name)
    raise UserError(
        f"unknown architecture {name!r}; registered: {', '.join(list_models())} "
        "(or any torchvision classifier, see --list-archs)"
    )


def build_model(
    name: str, num_classes: int, in_channels: int = 3, image_size: int = 224, **kwargs: Any
) -> nn.Module:
    """Build `name` for (in_channels, image_size, image_size) inputs; weights are random."""
    if num_classes < 2:
        raise UserError(f"num_classes must be at least 2, got {num_classes}")
    spec = get_spec(name)
    try:
        return spec.build(
            num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs
        )
    except (TypeError, ValueError) as err:
        raise UserError(f"bad options for {name!r}: {err}") from err


def check_input_size(model: nn.Module, name: str, in_channels: int, image_size: int) -> None:
    """UserError when `model` cannot take (in_channels, image_size, image_size) inputs (ViTs
    want their own size, Inception at least 75 px): one forward pass of two blank images, so the
    run fails before its first step, not in it."""
    was_training = model.training

    def refusal(size: int) -> Exception | None:
        """What a forward pass of two blank size x size images raises, if anything."""
        try:
            with torch.no_grad():
                model.eval()(torch.zeros(2, in_channels, size, size))
        except (RuntimeError, AssertionError, ValueError) as err:
            return err
        return None

    try:
        err = refusal(image_size)
        if err is None:
            return
        native = get_spec(name).native_size
        tried = [size for size in PROBED_SIZES if image_size < size < native]
        smallest = next((size for size in tried if refusal(size) is None), None)
        advice = (
            f"--image-size {native}, its native size"
            if smallest is None
            else f"--image-size {smallest}, the smallest of {', '.join(map(str, tried))} it takes"
        )
        raise UserError(
            f"{name} cannot take {in_channels}x{image_size}x{image_size} inputs "
            f"({str(err).splitlines()[0]}); try {advice}"
        ) from err
    finally:
        model.train(was_training)


# Input sizes tried, smallest first, to name the least a model takes when it refuses one.
PROBED_SIZES = (16, 24, 28, 32, 48, 64, 75, 96, 128, 160, 192)


# Alias in the torchvision spelling.
get_model = build_model
