"""Strided stems recast as SpaceToDepth + a stride-1 conv for int8 (`space_to_depth_stems`): the
same function on real ONNX Runtime sessions, and every conv it must leave alone left alone."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from training.onnx_graph import space_to_depth_stems

OPSET = 17
IR_VERSION = 8


def conv_graph(
    in_channels: int,
    kernel: tuple[int, int],
    size: tuple[int, int],
    *,
    out_channels: int = 16,
    bias: bool = True,
    **attributes: Any,
) -> onnx.ModelProto:
    """input (N, C, H, W) -> Conv -> Relu -> output, random weights."""
    rng = np.random.default_rng(sum(kernel) + in_channels)
    group = attributes.get("group", 1)
    weight = rng.standard_normal((out_channels, in_channels // group, *kernel)).astype(np.float32)
    initializers = [numpy_helper.from_array(weight, "stem.weight")]
    inputs = ["input", "stem.weight"]
    if bias:
        initializers.append(
            numpy_helper.from_array(rng.standard_normal(out_channels).astype(np.float32), "b")
        )
        inputs.append("b")
    nodes = [
        helper.make_node(
            "Conv", inputs, ["stem"], name="stem", kernel_shape=list(kernel), **attributes
        ),  # fmt: skip
        helper.make_node("Relu", ["stem"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "stem",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", in_channels, *size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["n", out_channels, "h", "w"])],
        initializers,
    )
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION
    )


def run(model: onnx.ModelProto, images: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, ["CPUExecutionProvider"])
    (out,) = session.run(["output"], {"input": images})
    return np.asarray(out)


def recast(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy, space_to_depth_stems(copy)


@pytest.mark.parametrize(
    ("in_channels", "kernel", "size", "attributes"),
    [
        (3, (7, 7), (224, 224), {"strides": [2, 2], "pads": [3, 3, 3, 3]}),  # ResNet
        (3, (3, 3), (224, 224), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),  # EfficientNet
        (1, (3, 3), (64, 64), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),  # grey
        (3, (4, 4), (224, 224), {"strides": [4, 4]}),  # ConvNeXt's patchify stem
        (3, (3, 3), (96, 128), {"strides": [2, 2], "pads": [0, 0, 1, 1]}),  # TF-style SAME
        (4, (6, 6), (60, 48), {"strides": [3, 3], "pads": [3, 0, 0, 2]}),  # odd everything
    ],
)
def test_a_strided_stem_computes_the_same_after_the_recast(
    in_channels: int, kernel: tuple[int, int], size: tuple[int, int], attributes: dict[str, Any]
) -> None:
    model = conv_graph(in_channels, kernel, size, **attributes)
    changed, stems = recast(model)
    assert stems == ["stem.weight"]
    kinds = [n.op_type for n in changed.graph.node]
    assert kinds == ["SpaceToDepth", "Conv", "Relu"]
    (conv,) = (n for n in changed.graph.node if n.op_type == "Conv")
    strides = next(helper.get_attribute_value(a) for a in conv.attribute if a.name == "strides")
    assert strides == [1, 1]
    assert "stem.weight" not in {t.name for t in changed.graph.initializer}
    onnx.checker.check_model(changed)
    images = np.random.default_rng(1).standard_normal((2, in_channels, *size)).astype(np.float32)
    want, got = run(model, images), run(changed, images)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    ("in_channels", "kernel", "size", "attributes"),
    [
        (3, (3, 3), (224, 224), {"strides": [1, 1], "pads": [1, 1, 1, 1]}),  # VGG: no stride
        (8, (3, 3), (112, 112), {"strides": [2, 2], "pads": [1, 1, 1, 1]}),  # deep in the net
        (4, (3, 3), (112, 112), {"strides": [2, 2], "pads": [1, 1, 1, 1], "group": 4}),
        (3, (3, 3), (224, 224), {"strides": [2, 2], "pads": [2, 2, 2, 2], "dilations": [2, 2]}),
        (3, (3, 3), (224, 224), {"strides": [2, 1], "pads": [1, 1, 1, 1]}),
        (3, (11, 11), (224, 224), {"strides": [4, 4], "pads": [2, 2, 2, 2]}),  # AlexNet: 2.1x
        (3, (7, 7), (225, 225), {"strides": [2, 2], "pads": [3, 3, 3, 3]}),  # 2 divides no side
        (3, (3, 3), (224, 224), {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ],
)
def test_other_convs_are_left_alone(
    in_channels: int, kernel: tuple[int, int], size: tuple[int, int], attributes: dict[str, Any]
) -> None:
    model = conv_graph(in_channels, kernel, size, **attributes)
    changed, stems = recast(model)
    assert stems == []
    assert changed.SerializeToString() == model.SerializeToString()


def test_a_stem_without_bias_and_shapes_only_from_inference() -> None:
    """The conv's input comes out of another node (a foreign graph's own normalisation), so its
    shape is known only once ONNX infers it."""
    model = conv_graph(3, (7, 7), (32, 32), bias=False, strides=[2, 2], pads=[3, 3, 3, 3])
    graph = model.graph
    graph.node[0].input[0] = "scaled"
    graph.node.insert(0, helper.make_node("Mul", ["input", "half"], ["scaled"]))
    graph.initializer.append(numpy_helper.from_array(np.float32(0.5), "half"))
    assert not graph.value_info
    changed, stems = recast(model)
    assert stems == ["stem.weight"]
    images = np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(run(changed, images), run(model, images), rtol=1e-5, atol=1e-4)
