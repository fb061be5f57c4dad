"""Reading and rewriting an ONNX classifier's graph: external data, readable layer names for its
tensors, the GAP + linear head behind class activation maps, the first conv's weights, and the
graph the model repository serves (`logits` plus `fm.<layer>` outputs, a dynamic batch axis).

Pure `onnx`: no ONNX Runtime (see `training.import_onnx`) and no torch.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from training.onnx_check import LOGITS_NAME, output_name

# protobuf cannot serialise a single message of 2 GiB or more: such models need external data.
MAX_ONNX_BYTES = 2**31 - 1

BATCH_DIM = "batch"
# The dynamo exporter records each node's module path in this metadata entry:
# ['', 'layer1', 'layer1.0', 'layer1.0.relu', 'relu_1'] (root, modules outermost first, the op).
TORCH_NAME_SCOPES = "pkg.torch.onnx.name_scopes"
UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")
# `?feature_maps=all` asks for every map: no layer may be called that.
RESERVED_LAYER_NAMES = frozenset({"all"})
# Ops a head may pass through between the pooled features and the linear layer.
PASS_THROUGH = frozenset({"Identity", "Dropout"})
FLATTENING = frozenset({"Flatten", "Reshape", "Squeeze"})
SPATIAL_AXES = ({2, 3}, {-1, -2})


@dataclass(frozen=True)
class CamHead:
    """A global-average-pool + linear head: the pooled (N, C, H, W) tensor and the linear
    layer's weights as (num_classes, C)."""

    feature_tensor: str
    weights: npt.NDArray[np.float32]


def all_graphs(model: onnx.ModelProto) -> Iterator[onnx.GraphProto]:
    """The main graph, then every subgraph (If/Loop/Scan bodies) and function body's nodes."""
    pending = [model.graph]
    while pending:
        graph = pending.pop()
        yield graph
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    pending.append(attr.g)
                pending.extend(attr.graphs)


def external_tensors(model: onnx.ModelProto) -> list[str]:
    """Names of the tensors stored outside the file (initializers, constants, subgraphs)."""
    found: list[str] = []

    def check(tensor: TensorProto, where: str) -> None:
        if tensor.data_location == TensorProto.EXTERNAL:
            found.append(tensor.name or where)

    nodes = [node for graph in all_graphs(model) for node in graph.node]
    nodes += [node for function in model.functions for node in function.node]
    for graph in all_graphs(model):
        for tensor in graph.initializer:
            check(tensor, "initializer")
        for sparse in graph.sparse_initializer:
            check(sparse.values, "sparse initializer")
    for node in nodes:
        for attr in node.attribute:
            if attr.HasField("t"):
                check(attr.t, node.name or node.op_type)
            for tensor in attr.tensors:
                check(tensor, node.name or node.op_type)
    return found


def default_opset(model: onnx.ModelProto) -> int:
    return int(next((o.version for o in model.opset_import if o.domain in {"", "ai.onnx"}), 0))


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The inputs a caller feeds: graph inputs that are not initializers (IR < 4 lists both)."""
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def dims(value: onnx.ValueInfoProto) -> list[int | str | None] | None:
    """Declared shape: an int per fixed axis, the name of a symbolic one, None where unknown;
    None when the rank itself is not declared."""
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    out: list[int | str | None] = []
    for dim in tensor.shape.dim:
        if dim.HasField("dim_value"):
            out.append(int(dim.dim_value))
        elif dim.HasField("dim_param"):
            out.append(dim.dim_param)
        else:
            out.append(None)
    return out


def _module_path(parts: list[str]) -> str:
    """TorchScript scopes → a module path: ['layer2', 'layer2.0', 'downsample', 'downsample.0']
    is layer2.0.downsample.0 (a Sequential's child repeats its parent's attribute name)."""
    path, previous = "", ""
    for part in parts:
        if path and previous and part.startswith(previous + "."):
            path += part[len(previous) :]
        else:
            path = f"{path}.{part}" if path else part
        previous = part
    return path


def _raw_layer_name(node: onnx.NodeProto) -> str:
    props = {p.key: p.value for p in node.metadata_props}
    if TORCH_NAME_SCOPES in props:  # dynamo exporter: full module paths, then the op's name
        try:
            scopes = [str(s) for s in ast.literal_eval(props[TORCH_NAME_SCOPES])]
        except (ValueError, SyntaxError):
            scopes = []
        modules = [s for s in scopes[:-1] if s]
        if modules or scopes:
            return modules[-1] if modules else scopes[-1]
    # TorchScript exporter: "/layer1/layer1.1/relu_1/Relu", the op type last.
    parts = [p for p in node.name.split("/") if p]
    if len(parts) > 1:
        return _module_path(parts[:-1])
    return node.name or (node.output[0] if node.output else "") or node.op_type


def _sanitize(name: str, fallback: str) -> str:
    """A name usable in `?feature_maps=` and as filters/<layer>.png: [A-Za-z0-9._-] only."""
    clean = UNSAFE_NAME_CHARS.sub("_", name).strip("._-")
    clean = clean or UNSAFE_NAME_CHARS.sub("_", fallback).strip("._-") or "node"
    return f"{clean}_" if clean in RESERVED_LAYER_NAMES else clean


def layer_names(model: onnx.ModelProto) -> dict[str, str]:
    """Tensor name → unique readable layer name for every node output of the main graph.

    Names follow the producing node: the TorchScript exporter's "/layer1/layer1.1/relu_1/Relu"
    and the dynamo exporter's scopes ('layer1.1.relu', second use) both give layer1.1.relu_1;
    other producers' node names are kept, made safe. A repeated name gets _1, _2, ... in graph
    order, as TorchScript numbers a module used twice.
    """
    names: dict[str, str] = {}
    taken: set[str] = set()
    for node in model.graph.node:
        base = _sanitize(_raw_layer_name(node), node.op_type)
        for index, tensor in enumerate(node.output):
            if not tensor:
                continue
            candidate = base if index == 0 else f"{base}.{index}"
            unique, count = candidate, 0
            while unique in taken:
                count += 1
                unique = f"{candidate}_{count}"
            taken.add(unique)
            names[tensor] = unique
    return names


def producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in model.graph.node for out in node.output if out}


def constants(model: onnx.ModelProto) -> dict[str, npt.NDArray[np.generic]]:
    """Initializers and Constant-node values of the main graph, by tensor name."""
    values: dict[str, npt.NDArray[np.generic]] = {
        t.name: numpy_helper.to_array(t) for t in model.graph.initializer
    }
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _attribute(node: onnx.NodeProto, name: str, default: object) -> object:
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _reduces_spatial_axes(node: onnx.NodeProto, values: dict[str, npt.NDArray[np.generic]]) -> bool:
    """A ReduceMean over H and W only (axes as attribute before opset 18, as input after)."""
    axes: object = _attribute(node, "axes", None)
    if axes is None and len(node.input) > 1 and node.input[1] in values:
        axes = values[node.input[1]].tolist()
    return isinstance(axes, list) and {int(a) for a in axes} in SPATIAL_AXES


def softmax_input(model: onnx.ModelProto, output: str) -> str | None:
    """The input of the Softmax over the last axis that computes `output` (through
    PASS_THROUGH nodes), if one does: the graph then ends in probabilities, not logits."""
    made_by = producers(model)
    node = made_by.get(output)
    while node is not None and node.op_type in PASS_THROUGH:
        node = made_by.get(node.input[0])
    if node is None or node.op_type != "Softmax":
        return None
    # Of an (N, classes) output, axis 1 and -1 are the classes (the default is 1 before opset
    # 13, -1 after); the caller checks that the input has the output's shape.
    axis = _attribute(node, "axis", -1)
    return node.input[0] if axis in (1, -1) else None


def cam_head(model: onnx.ModelProto, logits: str) -> CamHead | None:
    """The GlobalAveragePool (or ReduceMean over H, W) → Flatten/Reshape/Squeeze →
    Gemm or MatMul (+ Add) head that ends in `logits`, if the graph ends in one with constant
    weights; None otherwise."""
    made_by = producers(model)
    values = constants(model)

    def producer(tensor: str) -> onnx.NodeProto | None:
        node = made_by.get(tensor)
        while node is not None and node.op_type in PASS_THROUGH:
            node = made_by.get(node.input[0])
        return node

    node = producer(logits)
    if node is not None and node.op_type == "Add":  # MatMul + bias
        computed = [t for t in node.input if t not in values]
        node = producer(computed[0]) if len(computed) == 1 else None
    if node is None or len(node.input) < 2 or node.input[1] not in values:
        return None
    weight = np.asarray(values[node.input[1]], dtype=np.float32)
    if weight.ndim != 2:
        return None
    if node.op_type == "Gemm":
        if _attribute(node, "transA", 0):
            return None
        alpha = float(_attribute(node, "alpha", 1.0))  # type: ignore[arg-type]
        weights = alpha * (weight if _attribute(node, "transB", 0) else weight.T)
    elif node.op_type == "MatMul":
        weights = weight.T
    else:
        return None
    pooled = producer(node.input[0])
    while pooled is not None and pooled.op_type in FLATTENING:
        pooled = producer(pooled.input[0])
    if pooled is None:
        return None
    is_gap = pooled.op_type == "GlobalAveragePool"
    if not is_gap and not (
        pooled.op_type == "ReduceMean" and _reduces_spatial_axes(pooled, values)
    ):
        return None
    return CamHead(pooled.input[0], np.ascontiguousarray(weights, dtype=np.float32))


def first_conv_weight(model: onnx.ModelProto) -> tuple[str, npt.NDArray[np.float32]] | None:
    """The first Conv's layer name and weights (out, in, kH, kW) when they are an initializer;
    named after the weight (`conv1.weight` → conv1) where it says more than the node does."""
    initializers = {t.name: t for t in model.graph.initializer}
    names = layer_names(model)
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2:
            continue
        tensor = initializers.get(node.input[1])
        if tensor is None or len(tensor.dims) != 4:
            return None
        weight = np.asarray(numpy_helper.to_array(tensor), dtype=np.float32)
        stem = node.input[1].removesuffix(".weight")
        named = stem != node.input[1] and not UNSAFE_NAME_CHARS.search(stem)
        return (_sanitize(stem, node.op_type) if named else names[node.output[0]]), weight
    return None


def _set_dims(value: onnx.ValueInfoProto, shape: list[int | str]) -> None:
    value.type.tensor_type.elem_type = TensorProto.FLOAT
    value.type.tensor_type.shape.Clear()
    for size in shape:
        dim = value.type.tensor_type.shape.dim.add()
        if isinstance(size, int):
            dim.dim_value = size
        else:
            dim.dim_param = size


def serving_graph(
    model: onnx.ModelProto,
    *,
    logits: str,
    num_classes: int,
    maps: dict[str, tuple[str, tuple[int, int, int]]],
    input_shape: tuple[int, int, int],
    batch: int | str,
) -> onnx.ModelProto:
    """A copy of `model` whose outputs are `logits` (N, num_classes) and `fm.<layer>` for each
    layer → (tensor, (C, H, W)) of `maps`, each through an Identity node; its one input
    declares (batch, *input_shape). The original's other outputs are dropped.

    A fixed batch axis made symbolic drops the graph's value_info, shape hints that would pin
    the old size.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    (feed,) = graph_inputs(out)
    old_batch = (dims(feed) or [None])[0]
    _set_dims(feed, [batch, *input_shape])
    if isinstance(old_batch, int) and old_batch != batch:
        del graph.value_info[:]
    del graph.output[:]
    wanted = [(LOGITS_NAME, logits, [batch, num_classes])]
    wanted += [(output_name(layer), t, [batch, *shape]) for layer, (t, shape) in maps.items()]
    for name, tensor, shape in wanted:
        if name != tensor:
            graph.node.append(helper.make_node("Identity", [tensor], [name], name=f"{name}/out"))
        value = graph.output.add()
        value.name = name
        _set_dims(value, shape)
    return out


def probe_graph(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """A copy of `model` with `tensors` as extra outputs (untyped: ONNX Runtime infers them)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {o.name for o in out.graph.output}
    for tensor in tensors:
        if tensor not in present:
            out.graph.output.append(helper.make_empty_tensor_value_info(tensor))
    return out


def tensor_names(model: onnx.ModelProto) -> set[str]:
    """Every tensor name of the main graph: inputs, initializers, node outputs."""
    names = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer}
    return names | {out for node in model.graph.node for out in node.output}
