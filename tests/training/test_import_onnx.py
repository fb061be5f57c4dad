"""`python -m training.import_onnx` on graphs exported by plain `torch.onnx.export`: a randomly
initialised torchvision ResNet-18 three ways (TorchScript with a dynamic batch, dynamo, TorchScript
with a fixed batch of 1) and small CNNs for the edge cases and refusals. Everything runs through
real ONNX Runtime sessions on the photos the service bundles."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import pytest
import torch
from torch import nn

from service.metadata import ModelMetadata
from service.preprocess import preprocess
from tests.conftest import REPO_ROOT
from tests.training.onnx_exports import (
    RESNET_INPUT,
    RESNET_MAPS,
    TINY_CLASSES,
    TINY_SIZE,
    TinyCNN,
    dynamic_batch,
    resnet18,
    resnet_export,
    tiny_export,
    torchscript_export,
    write_labels,
)
from training.artifacts import sha256_of
from training.cli import USER_ERROR_EXIT_CODE, run_cli
from training.errors import UserError
from training.import_onnx import (
    MAX_ALL_FEATURE_MAPS,
    PHOTO_DIR,
    PHOTOS,
    ImportConfig,
    Preprocess,
    cli,
    main,
    preprocess_image,
)
from training.labels import imagenet_categories
from training.onnx_check import PARITY_TOLERANCE, ort_session, parity_errors, run_onnx
from training.onnx_graph import external_tensors, layer_names

MAX_PIXELS = 10_000_000


def validated(folder: Path) -> ModelMetadata:
    return ModelMetadata.model_validate_json((folder / "metadata.json").read_text())


def photo_inputs(meta: ModelMetadata) -> npt.NDArray[np.float32]:
    """The bundled photos as the service preprocesses them for `meta`: (2, C, H, W)."""
    files = [(PHOTO_DIR / name).read_bytes() for name in PHOTOS]
    return np.stack([preprocess(data, meta, max_pixels=MAX_PIXELS) for data in files])


def logits_one_by_one(path: Path, images: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    session = ort_session(path)
    name = session.get_outputs()[0].name
    return np.concatenate(
        [run_onnx(session, images[i : i + 1], [name])[name] for i in range(len(images))]
    )


@pytest.fixture(scope="module")
def resnet_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("resnet18")
    kinds = ("torchscript", "dynamo", "torchscript-batch1")
    return {kind: resnet_export(kind, folder / f"resnet18-{kind}.onnx") for kind in kinds}


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_export(tmp_path_factory.mktemp("tiny") / "tiny.onnx", **dynamic_batch())


@pytest.fixture(scope="module")
def labels10(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_labels(tmp_path_factory.mktemp("labels") / "labels.txt", TINY_CLASSES)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["torchscript", "dynamo", "torchscript-batch1"])
def test_resnet18_imports_with_stage_maps_cam_and_parity(
    kind: str, resnet_files: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    source = resnet_files[kind]
    folder = main(ImportConfig(source, "resnet18-onnx", repository=tmp_path / "models"))
    assert folder == tmp_path / "models" / "resnet18-onnx" / "1"
    meta = validated(folder)

    assert meta.input.shape == RESNET_INPUT
    assert meta.input.color_mode == "RGB"
    assert meta.input.name == ("x" if kind == "dynamo" else "input.1")
    assert (meta.preprocessing.resize, meta.preprocessing.center_crop) == (256, 224)
    assert meta.labels == imagenet_categories()
    assert meta.output.name == "logits"
    assert {fm.layer: fm.shape for fm in meta.feature_maps} == RESNET_MAPS
    assert [fm.output for fm in meta.feature_maps] == [f"fm.{layer}" for layer in RESNET_MAPS]
    assert meta.source is not None
    assert meta.source.kind == "onnx"
    assert (meta.source.file, meta.source.sha256) == (source.name, sha256_of(source))
    assert meta.export.sha256 == sha256_of(folder / "model.onnx")
    assert meta.export.torch is None
    assert meta.export.parity_max_abs_diff <= PARITY_TOLERANCE

    model = resnet18()
    assert meta.cam is not None
    assert meta.cam.feature_map == "fm.layer4.1.relu_1"
    cam = np.load(folder / meta.cam.weights)
    np.testing.assert_array_equal(cam, model.fc.weight.detach().numpy())
    assert [(f.layer, f.shape) for f in meta.filters] == [("conv1", (64, 3, 7, 7))]
    assert (folder / meta.filters[0].file).is_file()

    # The batch of 1 is made dynamic: the graph flattens with Flatten, not a fixed Reshape.
    assert meta.max_batch_size == 64
    written = onnx.load(str(folder / "model.onnx"))
    assert written.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    if kind == "torchscript-batch1":
        assert "batch axis made dynamic, max_batch_size 64" in caplog.text

    # Real photos: the written graph's logits are the original's, its maps are PyTorch's layers.
    images = photo_inputs(meta)
    reference = logits_one_by_one(source, images)
    served = run_onnx(ort_session(folder / "model.onnx"), images)
    assert parity_errors({"logits": reference}, {"logits": served["logits"]})["logits"] <= 1e-5
    hooked: dict[str, torch.Tensor] = {}
    modules = dict(
        zip(
            RESNET_MAPS,
            [model.relu, model.layer1, model.layer2, model.layer3, model.layer4],
            strict=True,
        )
    )
    for layer, module in modules.items():
        module.register_forward_hook(
            lambda _m, _i, out, layer=layer: hooked.__setitem__(layer, out)
        )
    with torch.no_grad():
        model(torch.from_numpy(images))
    torch_maps = {f"fm.{layer}": t.numpy() for layer, t in hooked.items()}
    errors = parity_errors(torch_maps, {name: served[name] for name in torch_maps})
    assert max(errors.values()) <= PARITY_TOLERANCE, errors


def test_parity_images_are_preprocessed_as_the_service_does(tmp_path: Path) -> None:
    pre = Preprocess("RGB", 256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    meta = ModelMetadata.model_validate(
        {
            "name": "m",
            "version": 1,
            "architecture": "onnx",
            "input": {"name": "x", "shape": [3, 224, 224], "color_mode": "RGB"},
            "preprocessing": pre.metadata(),
            "output": {"name": "logits"},
            "labels": ["a", "b"],
            "max_batch_size": 1,
            "export": {"opset": 20, "parity_max_abs_diff": 0.0, "sha256": "0" * 64},
        }
    )
    from PIL import Image

    for name, served in zip(PHOTOS, photo_inputs(meta), strict=True):
        with Image.open(PHOTO_DIR / name) as photo:
            np.testing.assert_array_equal(preprocess_image(photo, pre), served)


def test_fixed_batch_that_only_runs_one_image_stays_fixed(
    tmp_path: Path,
    labels10: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.INFO)
    source = tiny_export(tmp_path / "reshape1.onnx", batch=1, batch_of_one=True)
    folder = main(
        ImportConfig(source, "tiny-batch1", repository=tmp_path / "models", labels=str(labels10))
    )
    meta = validated(folder)
    assert meta.max_batch_size == 1
    assert meta.export.model_extra is not None
    assert meta.export.model_extra["batch"] == "fixed"
    written = onnx.load(str(folder / "model.onnx"))
    assert written.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    assert "a batch of 2 fails" in caplog.text
    assert "kept fixed, max_batch_size 1" in caplog.text
    assert "onnxruntime" not in capfd.readouterr().err  # said once, in the line above
    # A mean over H and W, a Reshape and a Gemm are a CAM head too.
    assert meta.cam is not None
    assert meta.cam.feature_map == "fm.relu2"


def test_feature_maps_by_tensor_or_layer_name_and_the_cam_map_added(
    tiny_file: Path, labels10: Path, tmp_path: Path
) -> None:
    folder = main(
        ImportConfig(
            tiny_file,
            "tiny",
            repository=tmp_path,
            labels=str(labels10),
            feature_maps="conv1, /pool/MaxPool_output_0",
        )
    )
    meta = validated(folder)
    assert [(fm.layer, fm.shape) for fm in meta.feature_maps] == [
        ("conv1", (8, 32, 32)),
        ("pool", (8, 16, 16)),
        ("relu2", (16, 16, 16)),  # the CAM's map
    ]
    assert meta.cam is not None
    assert meta.cam.feature_map == "fm.relu2"
    assert meta.architecture == f"onnx:tiny (pytorch {torch.__version__.split('+')[0]})"


class Probabilities(nn.Module):
    """TinyCNN ending in probabilities: a Softmax node, or the same computed by hand."""

    def __init__(self, by_hand: bool) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = TinyCNN().eval()
        self.by_hand = by_hand

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        if self.by_hand:
            exp = torch.exp(logits - logits.amax(1, keepdim=True))
            return exp / exp.sum(1, keepdim=True)
        return torch.softmax(logits, 1)


class EmbeddingThenLogits(nn.Module):
    """Two outputs of shape (N, k): an embedding first, then the logits."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.net = TinyCNN().eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.net
        x = net.pool(net.relu(net.conv1(x)))
        embedding = net.relu2(net.conv2(x)).mean((2, 3))
        return embedding, net.fc(embedding)


def test_logits_picks_the_output_that_holds_them(labels10: Path, tmp_path: Path) -> None:
    """By default the first (N, k) output is taken (here a 16-wide embedding, so the labels do
    not fit); `--logits` names the one to serve."""
    sample = torch.randn(2, 3, TINY_SIZE, TINY_SIZE)
    names = {"output_names": ["embedding", "scores"], "input_names": ["input"]}
    axes = {"dynamic_axes": {"input": {0: "n"}, "embedding": {0: "n"}, "scores": {0: "n"}}}
    path = torchscript_export(EmbeddingThenLogits(), tmp_path / "two.onnx", sample, **names, **axes)
    with pytest.raises(UserError, match="has 10 labels but the model has 16"):
        main(ImportConfig(path, "two", repository=tmp_path / "m", labels=str(labels10)))
    cfg = ImportConfig(
        path, "two", repository=tmp_path / "m", labels=str(labels10), logits="scores"
    )
    folder = main(cfg)
    export = json.loads((folder / "metadata.json").read_text())["export"]
    assert export["original_logits"] == "scores"
    assert validated(folder).num_classes == TINY_CLASSES
    images = photo_inputs(validated(folder))
    with torch.no_grad():
        expected = EmbeddingThenLogits()(torch.from_numpy(images))[1].numpy()
    np.testing.assert_allclose(
        logits_one_by_one(folder / "model.onnx", images), expected, rtol=1e-4, atol=1e-4
    )


def test_a_final_softmax_is_left_to_the_service(
    labels10: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    sample = torch.randn(2, 3, TINY_SIZE, TINY_SIZE)
    path = torchscript_export(
        Probabilities(by_hand=False), tmp_path / "p.onnx", sample, **dynamic_batch()
    )
    folder = main(ImportConfig(path, "probs", repository=tmp_path / "m", labels=str(labels10)))
    meta = validated(folder)
    export = json.loads((folder / "metadata.json").read_text())["export"]
    assert export["logits_before_softmax"] != export["original_logits"]
    assert "the input of the softmax" in caplog.text

    # Served logits are the network's logits: their softmax is the original graph's output.
    images = photo_inputs(meta)
    with torch.no_grad():
        logits = Probabilities(by_hand=False).net(torch.from_numpy(images)).numpy()
    served = run_onnx(ort_session(folder / "model.onnx"), images)["logits"]
    np.testing.assert_allclose(served, logits, atol=1e-5)
    probabilities = logits_one_by_one(path, images)
    exp = np.exp(served - served.max(1, keepdims=True))
    np.testing.assert_allclose(exp / exp.sum(1, keepdims=True), probabilities, atol=1e-6)
    assert meta.cam is not None  # the head under the softmax is still found


def test_probabilities_without_a_softmax_node_are_flagged(
    labels10: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sample = torch.randn(2, 3, TINY_SIZE, TINY_SIZE)
    path = torchscript_export(Probabilities(by_hand=True), tmp_path / "p.onnx", sample)
    folder = main(ImportConfig(path, "probs", repository=tmp_path / "m", labels=str(labels10)))
    export = json.loads((folder / "metadata.json").read_text())["export"]
    assert "logits_before_softmax" not in export
    assert "looks like probabilities" in caplog.text


def test_logits_are_not_flagged(
    tiny_file: Path, labels10: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    main(ImportConfig(tiny_file, "tiny", repository=tmp_path, labels=str(labels10)))
    assert "looks like probabilities" not in caplog.text
    assert "softmax" not in caplog.text


def assert_classifies_alike(written: Path, original: Path) -> None:
    """The same logits from both files for two random tiny-model inputs."""
    rng = np.random.default_rng(0)
    images = rng.standard_normal((2, 3, TINY_SIZE, TINY_SIZE)).astype(np.float32)
    np.testing.assert_allclose(
        logits_one_by_one(written, images),
        logits_one_by_one(original, images),
        rtol=1e-5,
        atol=1e-5,
    )


def test_external_data_beside_the_file_is_read_into_model_onnx(
    tiny_file: Path, labels10: Path, tmp_path: Path
) -> None:
    """`torch.onnx.export` keeps the weights in a file beside the graph by default; the
    repository's model.onnx holds them itself."""
    source = external_data(tiny_file, tmp_path)
    folder = main(
        ImportConfig(source, "tiny", repository=tmp_path / "models", labels=str(labels10))
    )
    assert not external_tensors(onnx.load(str(folder / "model.onnx"), load_external_data=False))
    assert not list(folder.glob("*.data"))
    assert_classifies_alike(folder / "model.onnx", tiny_file)


def test_a_graph_computing_in_float16_is_recorded_as_such(
    tiny_file: Path, labels10: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """float32 inputs and outputs around float16 layers (onnxruntime's converter with
    keep_io_types): classified as the original, its precision float16, no float16 maps."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    caplog.set_level(logging.INFO)
    half = convert_float_to_float16(onnx.load(str(tiny_file)), keep_io_types=True)
    source = _save(half, tmp_path / "half.onnx")
    folder = main(
        ImportConfig(source, "half", repository=tmp_path / "models", labels=str(labels10))
    )
    meta = validated(folder)
    assert meta.export.precision == "float16"
    assert meta.feature_maps == []
    assert "computes in float16" in caplog.text
    assert_classifies_alike(folder / "model.onnx", source)
    # --int8 would quantize around the float16 weights and write a graph labelled int8 that
    # computes as before: refused, pointing at the float32 original
    quantize = ImportConfig(
        source, "half8", repository=tmp_path / "models", labels=str(labels10), int8=True
    )
    with pytest.raises(UserError, match="float16 already: import the float32 graph"):
        main(quantize)


def test_feature_maps_auto_all_and_none(tiny_file: Path, labels10: Path, tmp_path: Path) -> None:
    def layers(choice: str) -> list[str]:
        cfg = ImportConfig(
            tiny_file, "tiny", tmp_path, labels=str(labels10), feature_maps=choice, force=True
        )
        return [fm.layer for fm in validated(main(cfg)).feature_maps]

    assert layers("auto") == ["relu", "relu2"]
    assert layers("all") == ["conv1", "relu", "pool", "conv2", "relu2"]
    assert layers("none") == []  # logits only: no CAM either


def test_feature_maps_all_is_capped(
    tmp_path: Path, labels10: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = tiny_export(tmp_path / "deep.onnx", depth=40, **dynamic_batch())
    cfg = ImportConfig(
        source, "deep", tmp_path / "models", labels=str(labels10), feature_maps="all"
    )
    meta = validated(main(cfg))
    layers = [fm.layer for fm in meta.feature_maps]
    assert len(layers) == MAX_ALL_FEATURE_MAPS
    assert layers[0] == "conv1"
    assert layers[-1] == "relu2"
    assert f"keeping {MAX_ALL_FEATURE_MAPS} evenly spaced" in caplog.text


def test_grey_input_with_dynamic_size_takes_the_preprocess_file(
    tmp_path: Path, labels10: Path
) -> None:
    source = tiny_export(
        tmp_path / "grey.onnx",
        channels=1,
        dynamic_axes={"input.1": {0: "n", 2: "h", 3: "w"}},
    )
    pre = {
        "resize": 44,
        "center_crop": 40,
        "interpolation": "bicubic",
        "mean": [0.5],
        "std": [0.25],
    }
    (tmp_path / "pre.json").write_text(json.dumps(pre))
    cfg = ImportConfig(
        source,
        "grey",
        tmp_path / "models",
        labels=str(labels10),
        preprocess=str(tmp_path / "pre.json"),
    )
    meta = validated(main(cfg))
    assert meta.input.shape == (1, 40, 40)
    assert meta.input.color_mode == "L"
    assert meta.preprocessing.model_dump() == pre
    assert meta.feature_maps[0].shape == (8, 40, 40)


def test_layer_names_of_other_producers_are_made_safe_and_unique() -> None:
    relu = [onnx.helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"]) for i in range(4)]
    relu[0].name = "StatefulPartitionedCall/model/conv 1/Relu"
    relu[1].name = "all"
    relu[2].name = "StatefulPartitionedCall/model/conv 1/Relu"  # the same again
    graph = onnx.helper.make_graph(relu, "g", [], [])
    assert list(layer_names(onnx.helper.make_model(graph)).values()) == [
        "StatefulPartitionedCall.model.conv_1",
        "all_",  # ?feature_maps=all means every map
        "StatefulPartitionedCall.model.conv_1_1",
        "t4",  # no name: the output's
    ]


# --- refusals: one ERROR line, exit status 2, nothing in the repository ---------------------
def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(model, str(path))
    return path


def external_data(tiny: Path, folder: Path) -> Path:
    path = folder / "external.onnx"
    onnx.save_model(
        onnx.load(str(tiny)),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="external.data",
        size_threshold=0,
    )
    return path


def external_data_missing(tiny: Path, folder: Path) -> Path:
    path = external_data(tiny, folder)
    (folder / "external.data").unlink()
    return path


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, TINY_CLASSES)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(a + b).mean((2, 3)))


def two_inputs(_tiny: Path, folder: Path) -> Path:
    path = folder / "two.onnx"
    sample = torch.randn(1, 3, TINY_SIZE, TINY_SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(TwoInputs().eval(), (sample, sample), str(path), dynamo=False)
    return path


def not_onnx(_tiny: Path, folder: Path) -> Path:
    path = folder / "photo.onnx"
    path.write_bytes((PHOTO_DIR / PHOTOS[0]).read_bytes())
    return path


def future_opset(tiny: Path, folder: Path) -> Path:
    model = onnx.load(str(tiny))
    model.opset_import[0].version = 99
    return _save(model, folder / "opset99.onnx")


def no_logits(tiny: Path, folder: Path) -> Path:
    model = onnx.load(str(tiny))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    del model.graph.output[:]
    model.graph.output.append(
        onnx.helper.make_tensor_value_info(conv.output[0], onnx.TensorProto.FLOAT, None)
    )
    return _save(model, folder / "maps-only.onnx")


def nan_logits(tiny: Path, folder: Path) -> Path:
    """The log of the logits: NaN wherever a logit is negative."""
    model = onnx.load(str(tiny))
    final = model.graph.output[0]
    model.graph.node.append(onnx.helper.make_node("Log", [final.name], ["logged"]))
    logged = onnx.ValueInfoProto()
    logged.CopyFrom(final)
    logged.name = "logged"
    del model.graph.output[:]
    model.graph.output.append(logged)
    return _save(model, folder / "nan.onnx")


def channels_last(_tiny: Path, folder: Path) -> Path:
    class Permuted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = TinyCNN()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x.permute(0, 3, 1, 2))

    return torchscript_export(
        Permuted().eval(), folder / "nhwc.onnx", torch.randn(1, TINY_SIZE, TINY_SIZE, 3)
    )


def same(tiny: Path, _folder: Path) -> Path:
    return tiny


RefusalCase = tuple[Callable[[Path, Path], Path], list[str], str]
REFUSALS: dict[str, RefusalCase] = {
    "not-onnx": (not_onnx, [], "is not an ONNX model"),
    "external-data-missing": (
        external_data_missing,
        [],
        "tensor(s) in external data files that cannot be read",
    ),
    "two-inputs": (two_inputs, [], "the graph has 2 inputs"),
    "channels-last": (channels_last, [], "C = 1 or 3"),
    "future-opset": (future_opset, [], "ONNX Runtime cannot load"),
    "no-logits": (no_logits, [], "no float output of shape (N, num_classes)"),
    "nan-logits": (nan_logits, [], "outputs NaN or infinity in logged for the sample photos"),
    "labels-count": (same, ["--labels", "{labels9}"], "has 9 labels but the model has 10"),
    "labels-missing": (same, [], "the model has 10 classes (output output; --logits picks"),
    "logits-unknown": (same, ["--logits", "nope"], "--logits nope: not a float output of shape"),
    "preprocess": (same, ["--preprocess", "{bad_pre}"], "std must be positive"),
    "preprocess-resize": (
        same,
        ["--preprocess", "{huge_pre}"],
        "resize must be from center_crop to 4 x center_crop, got 100000 for 32",
    ),
    "empty-maps": (same, ["--feature-maps", " , "], "names no map: auto, all, none"),
    "unknown-map": (
        same,
        ["--feature-maps", "layer9"],
        "no tensor or layer named layer9; maps include",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_refusal_is_one_error_line_and_writes_nothing(
    case: str, tiny_file: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    build, extra, message = REFUSALS[case]
    path = build(tiny_file, tmp_path)
    labels9 = write_labels(tmp_path / "labels9.txt", 9)
    bad_pre = tmp_path / "bad.json"
    bad_pre.write_text(
        json.dumps({"resize": 37, "center_crop": 32, "mean": [0, 0, 0], "std": [1, -1, 1]})
    )
    labels = (
        [] if case.startswith("labels") else ["--labels", str(write_labels(tmp_path / "l.txt", 10))]
    )
    huge_pre = tmp_path / "huge.json"
    huge_pre.write_text(
        json.dumps({"resize": 100000, "center_crop": 32, "mean": [0] * 3, "std": [1] * 3})
    )
    args = [a.format(labels9=labels9, bad_pre=bad_pre, huge_pre=huge_pre) for a in extra]
    repo = tmp_path / "models"
    caplog.set_level(logging.INFO)
    rc = run_cli(cli, [str(path), "--name", "refused", "--repository", str(repo), *labels, *args])
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert rc == USER_ERROR_EXIT_CODE
    assert len(errors) == 1, errors
    logged = errors[0].getMessage()
    assert "\n" not in logged
    assert message in logged
    assert not repo.exists()


@pytest.mark.slow
def test_imports_with_torch_unavailable(resnet_files: dict[str, Path], tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['torch'] = None\n"
        "sys.modules['torchvision'] = None\n"
        "from training.cli import run_cli\n"
        "from training.import_onnx import cli\n"
        f"rc = run_cli(cli, [{str(resnet_files['torchscript'])!r}, '--name', 'r18', "
        f"'--repository', {str(tmp_path)!r}])\n"
        "assert not [m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision') "
        "and sys.modules[m] is not None]\n"
        "sys.exit(rc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert f"wrote {tmp_path / 'r18' / '1'}" in done.stderr
    meta = validated(tmp_path / "r18" / "1")
    assert meta.labels == imagenet_categories()  # the shipped copy, without torchvision
