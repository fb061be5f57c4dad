"""Reading and rewriting an ONNX classifier's graph: external data, readable layer names for its
tensors, the GAP + linear head behind class activation maps, the first conv's weights, the
graph the model repository serves (`logits` plus `fm.<layer>` outputs, a dynamic batch axis), and
strided stems recast as SpaceToDepth + conv for int8.

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
# A strided conv over this many input channels or fewer (an RGB stem) is recast for int8 as
# SpaceToDepth + a stride-1 conv over s x s times the channels (`space_to_depth_stems`).
MAX_STEM_CHANNELS = 4
# ... unless the blocks' kernel has more than this many times the weights: AlexNet's 11x11/4
# becomes 4x4 over 48 channels, 2.1x the multiplications, and ran 0.83x as fast.
MAX_STEM_GROWTH = 2.0
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


def _stem_axis(
    size: int, begin: int, end: int, kernel: int, stride: int
) -> tuple[int, int, int, int]:
    """One spatial axis of a stride-`stride` conv as a stride-1 conv over blocks of `stride`:
    (offset of the kernel in the block-aligned window, block kernel size, begin pad, end pad) in
    blocks. Output i reads positions stride*i - begin + [0, kernel): the window starts `offset`
    positions earlier, at block i - pad_begin. The end pad keeps the output size; it is never
    negative (the windows end within the original's own end padding)."""
    out = (size + begin + end - kernel) // stride + 1
    offset = -begin % stride
    pad_begin = (begin + offset) // stride
    blocks = -(-(offset + kernel) // stride)
    return offset, blocks, pad_begin, out - 1 + blocks - pad_begin - size // stride


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    graph = model.graph
    if not graph.value_info:
        graph = onnx.shape_inference.infer_shapes(model).graph
    values = [*graph.input, *graph.value_info, *graph.output]
    return {v.name: shape for v in values if (shape := dims(v)) is not None}


def _stem_geometry(
    node: onnx.NodeProto, weight: onnx.TensorProto, shape: list[int | str | None] | None
) -> tuple[int, list[tuple[int, int, int, int]]] | None:
    """(stride, `_stem_axis` of H and W) where `space_to_depth_stems` recasts this conv."""
    strides = list(_attribute(node, "strides", [1, 1]))  # type: ignore[call-overload]
    stride = strides[0]
    size = (shape or [])[2:]
    if (
        len(weight.dims) != 4
        or weight.dims[1] > MAX_STEM_CHANNELS
        or strides != [stride, stride]
        or stride < 2
        or _attribute(node, "group", 1) != 1
        or set(_attribute(node, "dilations", [1]) or [1]) != {1}  # type: ignore[call-overload]
        or _attribute(node, "auto_pad", b"NOTSET") not in {b"NOTSET", "NOTSET"}
        or len(size) != 2
        or not all(isinstance(n, int) and n % stride == 0 for n in size)
    ):
        return None
    pads = list(_attribute(node, "pads", [0, 0, 0, 0]))  # type: ignore[call-overload]
    kernel = weight.dims[2:]
    axes = [
        _stem_axis(int(n), pads[axis], pads[axis + 2], kernel[axis], stride)  # type: ignore[arg-type]
        for axis, n in enumerate(size)
    ]
    growth = stride * stride * axes[0][1] * axes[1][1] / (kernel[0] * kernel[1])
    return None if growth > MAX_STEM_GROWTH else (stride, axes)


def _blocked_weight(
    weight: npt.NDArray[np.generic], stride: int, axes: list[tuple[int, int, int, int]]
) -> npt.NDArray[np.generic]:
    """(O, C, kH, kW) -> (O, s*s*C, rows, cols): the kernel placed at its offset in the
    block-aligned window, zeros around it, then split into SpaceToDepth's channel order (input
    channel c of block position (p, q) is channel (p * s + q) * C + c)."""
    out_channels, in_channels, height, width = weight.shape
    (top, rows, *_), (left, cols, *_) = axes
    padded = np.zeros((out_channels, in_channels, rows * stride, cols * stride), weight.dtype)
    padded[:, :, top : top + height, left : left + width] = weight
    blocked = padded.reshape(out_channels, in_channels, rows, stride, cols, stride)
    return blocked.transpose(0, 3, 5, 1, 2, 4).reshape(
        out_channels, stride * stride * in_channels, rows, cols
    )


def space_to_depth_stems(model: onnx.ModelProto) -> list[str]:
    """Recast, in place, each Conv with one stride s >= 2 on both axes over at most
    MAX_STEM_CHANNELS input channels (group 1, no dilation, explicit pads, static H and W that s
    divides) as SpaceToDepth(s) and a stride-1 Conv over s*s times the channels, its weights
    rearranged into the blocks and zero where the old kernel does not reach: the same sums of
    the same products, so the outputs agree up to float rounding. ONNX Runtime's int8 conv
    kernels multiply four channels at a time; over 3 channels and 49 kernel positions a
    ResNet stem takes a fifth of an int8 ResNet-18's time, over 12 channels and 16 positions
    half as long. Returns the rewritten convs' weight names."""
    graph = model.graph
    weights = {t.name: t for t in graph.initializer}
    shapes: dict[str, list[int | str | None]] | None = None
    rewritten: list[str] = []
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        weight = weights.get(node.input[1]) if node.op_type == "Conv" else None
        geometry = None
        if weight is not None:
            shapes = _static_shapes(model) if shapes is None else shapes
            geometry = _stem_geometry(node, weight, shapes.get(node.input[0]))
        if weight is None or geometry is None:
            nodes.append(node)
            continue
        stride, axes = geometry
        blocks = f"{node.output[0]}/space_to_depth"
        blocked = _blocked_weight(numpy_helper.to_array(weight), stride, axes)
        graph.initializer.append(numpy_helper.from_array(blocked, f"{blocks}/weight"))
        nodes.append(
            helper.make_node(
                "SpaceToDepth", [node.input[0]], [blocks], name=blocks, blocksize=stride
            )
        )
        nodes.append(
            helper.make_node(
                "Conv",
                [blocks, f"{blocks}/weight", *node.input[2:]],
                list(node.output),
                name=node.name or node.output[0],
                kernel_shape=[axes[0][1], axes[1][1]],
                strides=[1, 1],
                pads=[axes[0][2], axes[1][2], axes[0][3], axes[1][3]],
            )
        )
        rewritten.append(node.input[1])
    if rewritten:
        del graph.node[:]
        graph.node.extend(nodes)
        used = {i for g in all_graphs(model) for n in g.node for i in n.input}
        used |= {o.name for o in graph.output}
        unused = set(rewritten) - used
        for listed in (graph.initializer, graph.input):  # IR < 4 lists weights as inputs too
            kept = [t for t in listed if t.name not in unused]
            del listed[:]
            listed.extend(kept)
    return rewritten
