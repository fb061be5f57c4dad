"""Every registered architecture exports with its feature maps and passes the parity check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from service.metadata import ModelMetadata
from tests.training.archs import REQUIRED
from tests.training.conftest import fashion_samples
from training.data.idx import FASHION_MNIST_LABELS
from training.data.transforms import Preprocessing
from training.export import ExportSpec, write_version
from training.imagenet import IMAGENET_MEAN, IMAGENET_STD
from training.onnx_check import LOGITS_NAME, PARITY_TOLERANCE, ort_session, run_onnx
from training.registry import build_model, get_spec

GRAY_28 = Preprocessing("L", 28, 28, (0.286,), (0.353,))
RGB_224 = Preprocessing("RGB", 256, 224, IMAGENET_MEAN, IMAGENET_STD)
SAMPLES = 2
# The 4096-wide MLP heads of AlexNet/VGG at 224 are 0.5 GB of weights; a 64-wide head keeps CI fast
# while exporting the same conv stack.
TINY_HEAD = {
    "alexnet": {"head_width": 64},
    "vgg16": {"head_width": 64},
    "vgg19": {"head_width": 64},
}
CASES = [(arch, pre) for pre in (GRAY_28, RGB_224) for arch in sorted(REQUIRED)]


def export_case(arch: str, pre: Preprocessing, folder: Path) -> tuple[ModelMetadata, list[str]]:
    size = pre.center_crop
    kwargs = TINY_HEAD.get(arch, {}) if size > 64 else {}
    model = build_model(arch, 10, pre.channels, size, **kwargs).eval()
    spec = ExportSpec(
        name=f"{arch.replace('_', '-')}-test",
        version=1,
        arch=arch,
        labels=list(FASHION_MNIST_LABELS),
        preprocessing=pre,
        layers=get_spec(arch).feature_layers(model),
    )
    write_version(model, spec, fashion_samples(pre, SAMPLES), folder)
    return ModelMetadata.model_validate_json((folder / "metadata.json").read_text()), spec.layers


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "pre"), CASES, ids=[f"{a}-{p.center_crop}" for a, p in CASES])
def test_export_parity(arch: str, pre: Preprocessing, fashion_dir: Path, tmp_path: Path) -> None:
    meta, layers = export_case(arch, pre, tmp_path)
    assert meta.export.parity_max_abs_diff <= PARITY_TOLERANCE
    assert meta.input.shape == (pre.channels, pre.center_crop, pre.center_crop)
    assert layers
    assert [fm.layer for fm in meta.feature_maps] == layers
    session = ort_session(tmp_path / "model.onnx", threads=1)
    names = [o.name for o in session.get_outputs()]
    assert names == [LOGITS_NAME, *(fm.output for fm in meta.feature_maps)]
    batch = fashion_samples(pre, 3).numpy()  # another batch size than at export: dynamic axis
    outputs = run_onnx(session, batch)
    assert outputs[LOGITS_NAME].shape == (3, 10)
    for fm in meta.feature_maps:
        assert outputs[fm.output].shape == (3, *fm.shape)
    assert (tmp_path / meta.filters[0].file).is_file()
    if get_spec(arch).cam is not None:
        assert meta.cam is not None
        weights = np.load(tmp_path / meta.cam.weights, allow_pickle=False)
        assert weights.dtype == np.float32
        channels = meta.feature_map(meta.cam.feature_map.removeprefix("fm."))
        assert channels is not None
        assert weights.shape == (10, channels.shape[0])
    else:
        assert meta.cam is None


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        ("regnet_y_400mf", ["stem.2", "trunk_output.block1", "trunk_output.block2",
                            "trunk_output.block3", "trunk_output.block4"]),
        ("shufflenet_v2_x0_5", ["conv1.2", "maxpool", "stage2.3", "stage3.7", "conv5.2"]),
        ("googlenet", ["conv1", "conv3", "inception3b", "inception4e", "inception5b"]),
    ],
)  # fmt: skip
def test_layouts_without_common_names_get_one_map_per_resolution(
    arch: str, expected: list[str]
) -> None:
    """Torchvision classifiers with neither layer1..4 nor a `features` Sequential: the last
    block at each spatial size, as one probe run finds them."""
    model = build_model(arch, num_classes=10)
    assert get_spec(arch).feature_layers(model) == expected
    assert model.training  # the probe leaves the model as it found it


@pytest.mark.parametrize(
    ("arch", "cam_layer"),
    [("shufflenet_v2_x0_5", "conv5.2"), ("googlenet", "inception5b"),
     ("regnet_x_400mf", "trunk_output.block4"), ("resnext50_32x4d", "layer4"),
     ("densenet121", None), ("mobilenet_v3_small", None)],
)  # fmt: skip
def test_a_cam_wherever_the_logits_are_a_linear_map_of_the_pooled_features(
    arch: str, cam_layer: str | None
) -> None:
    """Logits = W · mean over H, W of the deepest map + b: then the CAM weights are W. DenseNet's
    ReLU and MobileNet-V3's MLP between them leave no CAM."""
    spec = get_spec(arch)
    model = build_model(arch, num_classes=10).eval()
    if cam_layer is None:
        assert spec.cam is None
        return
    assert spec.cam is not None
    source = spec.cam(model)
    assert source.layer == cam_layer
    maps: list[torch.Tensor] = []
    hook = model.get_submodule(cam_layer).register_forward_hook(
        lambda _m, _i, output: maps.append(output.clone())  # type: ignore[func-returns-value]
    )
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        logits = model(images)
    hook.remove()
    bias = logits - maps[0].mean(dim=(2, 3)) @ source.weights.T
    torch.testing.assert_close(bias, bias[:1].expand_as(bias), rtol=1e-4, atol=1e-4)
