"""Adapting torchvision classifiers to other channel counts and small inputs, without forking them.

Each helper swaps one submodule of a model built by torchvision's own builder: the stem conv (its
input channels, or a 3×3 stride-1 stem for small images), a pooling layer that a 28×28 image would
shrink below 1×1, or the fully connected head sized for 224×224 inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

import torch
import torchvision
from torch import nn

from training.registry import ArchSpec, CamLocator, CamSource

# Below this side length the 224-oriented stems (stride 2-4 plus max pool) waste most of the image.
SMALL_INPUT_MAX = 64
SMALL_HEAD_WIDTH = 512


def is_small(image_size: int) -> bool:
    return image_size < SMALL_INPUT_MAX


def replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    """Put `new` at dotted `path` (e.g. `features.0.0`) in place of the module there."""
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, new)


def first_conv_path(model: nn.Module) -> str:
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return str(name)
    raise ValueError(f"{type(model).__name__} has no Conv2d layer")


def set_in_channels(model: nn.Module, in_channels: int, path: str | None = None) -> None:
    """Rebuild the conv at `path` (default: the first one) for `in_channels` inputs."""
    path = path or first_conv_path(model)
    conv = model.get_submodule(path)
    assert isinstance(conv, nn.Conv2d)
    if conv.in_channels == in_channels:
        return
    replace_module(model, path, _conv_like(conv, in_channels=in_channels))


def small_stem(model: nn.Module, path: str, in_channels: int) -> None:
    """Replace the stem conv at `path` with a 3×3 stride-1 conv keeping its output channels."""
    conv = model.get_submodule(path)
    assert isinstance(conv, nn.Conv2d)
    replace_module(
        model,
        path,
        _conv_like(conv, in_channels=in_channels, kernel_size=3, stride=1, padding=1),
    )


def _conv_like(conv: nn.Conv2d, **changes: Any) -> nn.Conv2d:
    options: dict[str, Any] = {
        "in_channels": conv.in_channels,
        "out_channels": conv.out_channels,
        "kernel_size": conv.kernel_size,
        "stride": conv.stride,
        "padding": conv.padding,
        "bias": conv.bias is not None,
    }
    options.update(changes)
    return nn.Conv2d(**options)


def drop_excess_pools(features: nn.Sequential, image_size: int) -> None:
    """Turn max pools that would shrink the map below 1×1 into identities (module names stay)."""
    size = image_size
    for name, module in features.named_children():
        if isinstance(module, nn.MaxPool2d):
            if size // 2 < 1:
                setattr(features, name, nn.Identity())
            else:
                size //= 2


def pool_positions(features: nn.Sequential) -> list[str]:
    """Child names of the max pools (or the identities that replaced them): block outputs."""
    names = [n for n, m in features.named_children() if isinstance(m, nn.MaxPool2d | nn.Identity)]
    return [f"features.{n}" for n in names]


def small_mlp_head(model: nn.Module, in_features: int, num_classes: int, width: int) -> None:
    """Global-average-pool the features and shrink the 4096-wide MLP head to `width`."""
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    classifier = model.get_submodule("classifier")
    assert isinstance(classifier, nn.Sequential)
    linears = [n for n, m in classifier.named_children() if isinstance(m, nn.Linear)]
    dims = [in_features] + [width] * (len(linears) - 1) + [num_classes]
    for i, name in enumerate(linears):
        setattr(classifier, name, nn.Linear(dims[i], dims[i + 1]))


# torchvision classifiers whose auxiliary heads make training-mode outputs a tuple.
AUX_HEAD_MODELS = ("googlenet", "inception_v3")


@cache
def torchvision_classifiers() -> frozenset[str]:
    return frozenset(torchvision.models.list_models(module=torchvision.models))


def generic_feature_layers(model: nn.Module) -> list[str]:
    """Block outputs of an unregistered torchvision classifier, by its common layout, else the
    last block at each resolution (`last_block_per_resolution`)."""
    names = dict(model.named_children())
    if all(f"layer{i}" in names for i in range(1, 5)):
        return [f"layer{i}" for i in range(1, 5)]
    features = names.get("features")
    if isinstance(features, nn.Sequential):
        return [f"features.{n}" for n, _ in features.named_children()]
    return last_block_per_resolution(model)


PROBE_SIZE = 224  # every torchvision classifier takes it (Inception v3 from 75 px)
Hook = Callable[[nn.Module, Any, Any], None]


def probe_run(model: nn.Module, hooks: Mapping[str, Hook]) -> Any:
    """One forward pass of a seeded random PROBE_SIZE image through `model` in eval mode, each
    of `hooks` (a forward hook by module path) attached for it; the model's mode is restored.
    None, without a run, for a model without a Conv2d (its input channels are unknown)."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        return None
    seed = torch.Generator().manual_seed(0)
    image = torch.randn(1, conv.in_channels, PROBE_SIZE, PROBE_SIZE, generator=seed)
    handles = [model.get_submodule(path).register_forward_hook(h) for path, h in hooks.items()]
    was_training = model.training
    try:
        with torch.no_grad():
            return model.eval()(image)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)


def last_block_per_resolution(model: nn.Module) -> list[str]:
    """Of the model's top-level blocks (a Sequential's children, one level down), the last to
    output each spatial size, in forward order: one map per resolution, as RegNet's, ShuffleNet's,
    GoogLeNet's and Inception's layouts have no common names. Found by one probe run."""
    candidates = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential):
            candidates += [f"{name}.{n}" for n, _ in child.named_children()]
        else:
            candidates.append(name)
    order: list[str] = []
    sizes: dict[str, tuple[int, int]] = {}

    def record(path: str) -> Hook:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            is_map = isinstance(output, torch.Tensor) and output.ndim == 4
            if is_map and path not in sizes and output.shape[2] * output.shape[3] > 1:
                sizes[path] = (int(output.shape[2]), int(output.shape[3]))
                order.append(path)

        return hook

    probe_run(model, {path: record(path) for path in candidates})
    last: dict[tuple[int, int], str] = {}
    for path in order:
        last.pop(sizes[path], None)  # re-inserted: the dict keeps the order of the last ones
        last[sizes[path]] = path
    return sorted(last.values(), key=order.index)


def gap_linear_cam(probe: nn.Module) -> CamLocator | None:
    """Where a CAM comes from when the probe's logits are its last Linear layer applied to the
    global average of its deepest default feature map (checked on one probe run, since the
    layouts differ: ResNeXt's `layer4` and `fc`, EfficientNet-B1's `features.8` and
    `classifier.1`, GoogLeNet's `inception5b` and `fc`, ...); None otherwise (a ReLU or an MLP
    between them, as in DenseNet and MobileNet)."""
    layers = generic_feature_layers(probe)
    linears = [name for name, m in probe.named_modules() if isinstance(m, nn.Linear)]
    if not layers or not linears:
        return None
    layer, linear = layers[-1], linears[-1]
    seen: dict[str, Any] = {}

    def record_map(_module: nn.Module, _inputs: Any, output: Any) -> None:
        # A copy, as the export takes one: an in-place ReLU after it (DenseNet) must show.
        if isinstance(output, torch.Tensor):
            seen.setdefault("map", output.clone())

    def record_head(_module: nn.Module, inputs: Any, output: Any) -> None:
        seen.setdefault("head", (inputs[0], output))

    logits = probe_run(probe, {layer: record_map, linear: record_head})
    if "map" not in seen or "head" not in seen or not isinstance(logits, torch.Tensor):
        return None
    pooled = seen["map"].mean(dim=(2, 3))
    features, output = seen["head"]
    fits = features.shape == pooled.shape and torch.allclose(features, pooled, atol=1e-5)
    if not fits or not torch.equal(output, logits):
        return None

    def locate(model: nn.Module) -> CamSource:
        head = model.get_submodule(linear)
        assert isinstance(head, nn.Linear)
        return CamSource(layer, head.weight.detach())

    return locate


def _defaults(name: str) -> dict[str, Any]:
    """Builder options a torchvision classifier gets unless the user sets them: GoogLeNet and
    Inception v3 without aux heads (training reads one output, not (logits, aux, ...)) and with
    their own weight init said explicitly (torchvision warns when it is left implicit)."""
    return {"aux_logits": False, "init_weights": True} if name in AUX_HEAD_MODELS else {}


@cache
def torchvision_spec(name: str) -> ArchSpec:
    """Registry entry for any torchvision classifier: builder, channel adaptation only."""

    def build(
        num_classes: int, in_channels: int = 3, image_size: int = 224, **kwargs: Any
    ) -> nn.Module:
        model: nn.Module = torchvision.models.get_model(
            name, weights=None, num_classes=num_classes, **{**_defaults(name), **kwargs}
        )
        set_in_channels(model, in_channels)
        return model

    probe = torchvision.models.get_model(name, weights=None, **_defaults(name))
    return ArchSpec(name, build, generic_feature_layers, gap_linear_cam(probe))
