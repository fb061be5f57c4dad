"""ONNX export with feature maps as extra outputs, ONNX Runtime inference, and the parity figure.

The graph: input `input` (N, C, H, W) float32 with a dynamic batch axis, output `logits`
(N, num_classes), then one output `fm.<layer>` per exported layer, in the order given.
"""

from __future__ import annotations

import collections
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import torch
from torch import nn

from training.errors import UserError
from training.onnx_check import INPUT_NAME, LOGITS_NAME, Arrays, output_name
from training.onnx_graph import MAX_ONNX_BYTES

logger = logging.getLogger(__name__)


class FeatureMapModel(nn.Module):
    """Returns `(logits, *maps)`: the wrapped model's logits and its layers' hooked outputs."""

    def __init__(self, model: nn.Module, layers: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.layers = list(layers)
        self._maps: dict[str, torch.Tensor] = {}
        for layer in self.layers:
            model.get_submodule(layer).register_forward_hook(self._hook(layer))

    def _hook(self, layer: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            # A copy: torchvision's in-place ReLUs (ReLU(inplace=True), F.relu(x, inplace=True))
            # overwrite the layer's output after the hook, and the map would be the ReLU's.
            self._maps[layer] = output.clone()

        return hook

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self._maps = {}
        logits = self.model(x)
        return (logits, *(self._maps[layer] for layer in self.layers))


def first_conv(model: nn.Module) -> tuple[str, npt.NDArray[np.float32]]:
    """The first Conv2d's module path and weights (out, in, kH, kW)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module.weight.detach().float().cpu().numpy()
    raise ValueError(f"{type(model).__name__} has no Conv2d layer")


def check_layers(model: nn.Module, layers: Sequence[str]) -> None:
    """Every layer must be a module of `model` (named as in `named_modules`)."""
    names = dict(model.named_modules())
    unknown = [layer for layer in layers if layer not in names or layer == ""]
    if unknown:
        choices = [n for n, m in names.items() if n and isinstance(m, nn.Conv2d | nn.MaxPool2d)]
        raise UserError(
            f"unknown layer(s) {', '.join(unknown)}; conv/pool layers of this model include: "
            + ", ".join(choices[:40])
        )
    if len(set(layers)) != len(layers):
        raise UserError("feature-map layers must be unique")


def check_feature_map_shapes(model: nn.Module, layers: Sequence[str], sample: torch.Tensor) -> None:
    """Every layer must output one (N, C, H, W) tensor (metadata `feature_maps` are (C, H, W)
    maps of conv/pool blocks, docs/repository.md) and run once per forward pass (a module
    called twice, as torchvision's residual blocks call their one ReLU, has no one output);
    runs `model` once on `sample[:1]` to see."""
    if not layers:
        return
    outputs: dict[str, Any] = {}
    calls: collections.Counter[str] = collections.Counter()

    def record(name: str) -> Any:
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            outputs.setdefault(name, output)
            calls[name] += 1

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if n]
    try:
        with torch.no_grad():
            model(sample[:1])
    finally:
        for handle in handles:
            handle.remove()

    def is_map(output: Any) -> bool:
        return isinstance(output, torch.Tensor) and output.ndim == 4

    def described(layer: str) -> str:
        output = outputs.get(layer)
        if output is None:
            return f"{layer} (not run by forward)"
        if isinstance(output, torch.Tensor):
            return f"{layer} (output {tuple(output.shape)})"
        return f"{layer} (output {type(output).__name__})"

    valid = [n for n, o in outputs.items() if is_map(o) and calls[n] == 1]
    bad = [described(layer) for layer in layers if not is_map(outputs.get(layer))]
    if bad:
        raise UserError(
            f"feature-map layer(s) {', '.join(bad)} do not output (N, C, H, W) maps; layers "
            f"that do include: {', '.join(valid[:40])}"
        )
    reused = [f"{layer} ({calls[layer]} times)" for layer in layers if calls[layer] > 1]
    if reused:
        parents = sorted({layer.rpartition(".")[0] for layer in layers if calls[layer] > 1} - {""})
        hint = f", e.g. the block around it: {', '.join(parents)}" if parents else ""
        raise UserError(
            f"feature-map layer(s) {', '.join(reused)} run more than once in one forward pass, "
            f"so no single output is theirs: pick a module that runs once{hint}"
        )


def torch_outputs(wrapper: FeatureMapModel, images: torch.Tensor) -> Arrays:
    with torch.no_grad():
        outputs = wrapper(images)
    names = [LOGITS_NAME, *(output_name(layer) for layer in wrapper.layers)]
    return {n: o.detach().float().cpu().numpy() for n, o in zip(names, outputs, strict=True)}


def export_onnx(wrapper: FeatureMapModel, sample: torch.Tensor, path: Path) -> int:
    """Export with a dynamic batch axis to one self-contained file; returns the opset."""
    if sample.shape[0] < 2:
        raise ValueError("export needs a sample batch of at least 2 (batch 1 gets specialised)")
    names = [LOGITS_NAME, *(output_name(layer) for layer in wrapper.layers)]
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter about dynamic shapes
        program = torch.onnx.export(
            wrapper.eval(),
            (sample,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=names,
            dynamic_shapes={"x": {0: batch}},
            verbose=False,
        )
    if program is None:
        raise RuntimeError("torch.onnx.export returned no program")
    size = sum(p.numel() * p.element_size() for p in wrapper.parameters())
    if size >= MAX_ONNX_BYTES:
        raise UserError(
            f"weights take {size / 2**30:.1f} GiB: too large for a self-contained ONNX file "
            "(protobuf limit 2 GiB); the repository refuses external data"
        )
    program.save(str(path), external_data=False)
    proto = onnx.load(str(path), load_external_data=False)
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        raise UserError(f"{path} would need external data; refusing")
    return int(next(o.version for o in proto.opset_import if o.domain in {"", "ai.onnx"}))
