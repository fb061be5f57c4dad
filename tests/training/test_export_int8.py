"""`--int8` export: a statically quantized graph (QDQ, integer kernels in ONNX Runtime) with float32
inputs and outputs, calibrated on images the gate never compares on, and an accuracy gate that
refuses a badly calibrated model with one ERROR line and nothing written unless the loss is
accepted. Real parts throughout: the tiny LeNet-5 run and the committed LeNet-5 on Debian's
Fashion-MNIST, a random ResNet-18 on the bundled photos, ONNX Runtime's own quantizer."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from PIL import Image

from service.metadata import ModelMetadata
from tests.conftest import REPO_ROOT
from tests.training.conftest import fashion_samples
from training.artifacts import sha256_of
from training.checkpoint import load_checkpoint, preprocessing_of
from training.cli import USER_ERROR_EXIT_CODE, run_cli
from training.data.datasets import image_paths, load_dataset
from training.data.idx import load_fashion_mnist
from training.errors import UserError
from training.export import ExportConfig
from training.export import cli as export_cli
from training.export import main as export_main
from training.export_int8 import (
    MIN_AGREEMENT,
    SHIFT_MIN_GAIN,
    SHIFTED_ZERO_POINT,
    folder_split,
    photo_split,
    shift_weight_zero_points,
)
from training.import_onnx import ImportConfig
from training.import_onnx import cli as import_cli
from training.import_onnx import main as import_main
from training.onnx_check import PARITY_TOLERANCE, ort_session, run_onnx
from training.train import TrainResult

CALIBRATION = 64
GATE_IMAGES = 1000
SAMPLES = 32
COMMITTED_LENET = REPO_ROOT / "models" / "lenet5-fashion" / "1"
TREE_TRAIN, TREE_VAL = 256, 2000
INT8 = onnx.TensorProto.INT8


def metadata_of(folder: Path) -> ModelMetadata:
    return ModelMetadata.model_validate_json((folder / "metadata.json").read_text())


def quantization_of(folder: Path) -> dict[str, Any]:
    """metadata.json `export.quantization` (plain JSON)."""
    return dict((metadata_of(folder).export.model_extra or {})["quantization"])


def error_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.fixture(scope="module")
def versions(tiny_run: TrainResult, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny LeNet-5 exported as float32 (1) and --int8 (2). One epoch on 1024 images leaves
    logits too close for the 99 % agreement gate, so this export accepts the loss; the gate's
    own tests follow."""
    repository = tmp_path_factory.mktemp("int8-repo")
    common = {"checkpoint": tiny_run.best_checkpoint, "name": "tiny", "repository": repository,
              "evaluate": False, "parity_samples": 8}  # fmt: skip
    full = export_main(ExportConfig(**common))  # type: ignore[arg-type]
    int8 = export_main(
        ExportConfig(
            **common,  # type: ignore[arg-type]
            int8=True,
            calibration=CALIBRATION,
            gate_images=GATE_IMAGES,
            accept_accuracy_loss=True,
        )
    )
    return {"float32": full, "int8": int8}


def test_graph_is_quantized_and_runs_integer_kernels(
    versions: dict[str, Path], tmp_path: Path
) -> None:
    model = onnx.load(str(versions["int8"] / "model.onnx"))
    graph = model.graph
    kinds = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= kinds
    dequantized = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
    initializers = {t.name: t for t in graph.initializer}
    weighted = [n for n in graph.node if n.op_type in {"Conv", "Gemm"}]
    assert len(weighted) == 5  # LeNet-5: two convs, three fully connected layers
    for node in weighted:
        weight = dequantized[node.input[1]]  # every weight comes out of a DequantizeLinear
        values, scale = initializers[weight.input[0]], initializers[weight.input[1]]
        assert values.data_type == INT8
        assert list(scale.dims) == [values.dims[0]]  # one scale per output channel
    # ONNX Runtime fuses the QDQ pairs into integer kernels when it loads the graph.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(versions["int8"] / "model.onnx"), options)
    optimized = {n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node}
    assert {"QLinearConv", "QGemm"} <= optimized
    assert not {"Conv", "Gemm"} & optimized
    float_bytes = (versions["float32"] / "model.onnx").stat().st_size
    assert (versions["int8"] / "model.onnx").stat().st_size < 0.5 * float_bytes


def test_inputs_and_outputs_stay_float32(tiny_run: TrainResult, versions: dict[str, Path]) -> None:
    int8, full = (ort_session(versions[p] / "model.onnx") for p in ("int8", "float32"))
    assert [(i.name, i.type, i.shape) for i in int8.get_inputs()] == [
        (i.name, i.type, i.shape) for i in full.get_inputs()
    ]
    assert [(o.name, o.type) for o in int8.get_outputs()] == [
        (o.name, o.type) for o in full.get_outputs()
    ]
    assert {o.type for o in int8.get_outputs()} == {"tensor(float)"}
    pre = preprocessing_of(load_checkpoint(tiny_run.best_checkpoint))
    images = fashion_samples(pre, SAMPLES).numpy()
    got, want = run_onnx(int8, images), run_onnx(full, images)
    for name, value in want.items():
        assert got[name].dtype == np.float32
        assert got[name].shape == value.shape
        # quantization rounds, it does not garble: within a few per cent of the range
        scale = max(1.0, float(np.abs(value).max()))
        assert float(np.abs(got[name] - value).max()) / scale < 0.1, name
    assert float(got["fm.features.relu1"].min()) >= 0.0  # still the ReLU's output


def test_metadata_records_calibration_and_the_gate(versions: dict[str, Path]) -> None:
    folder = versions["int8"]
    meta = metadata_of(folder)
    assert meta.export.precision == "int8"
    assert meta.export.sha256 == sha256_of(folder / "model.onnx")
    assert meta.feature_maps == metadata_of(versions["float32"]).feature_maps
    extra = meta.export.model_extra or {}
    assert extra["parity_tolerance"] is None  # the gate judges int8, not an elementwise bound
    q = quantization_of(folder)
    assert (q["format"], q["calibrate_method"]) == ("QDQ", "MinMax")
    assert q["calibration"] == {
        "source": "fashion-mnist training split, a fixed random subset",
        "images": CALIBRATION,
    }
    assert q["evaluation"]["images"] == GATE_IMAGES
    assert "test split" in q["evaluation"]["source"]
    assert q["space_to_depth"] == []  # LeNet-5's convs have stride 1
    agreement, before, after = q["top1_agreement"], q["accuracy_float32"], q["accuracy_int8"]
    assert 0.9 < agreement <= 1.0
    assert q["accuracy_drop_pp"] == pytest.approx(100 * (before - after), abs=1e-3)
    assert q["float32_parity_max_abs_diff"] <= PARITY_TOLERANCE
    assert q["gate"]["passed"] == (agreement >= MIN_AGREEMENT and before - after <= 0.01)


def weight_zero_points(model: onnx.ModelProto) -> set[int]:
    """Every zero point of the graph's weights (DequantizeLinear of a rank >= 2 initializer)."""
    initializers = {t.name: t for t in model.graph.initializer}
    found: set[int] = set()
    for node in model.graph.node:
        weight = initializers.get(node.input[0])
        if node.op_type == "DequantizeLinear" and weight is not None and len(weight.dims) >= 2:
            found |= {int(z) for z in numpy_helper.to_array(initializers[node.input[2]]).ravel()}
    return found


def test_the_faster_weight_zero_point_is_kept(versions: dict[str, Path]) -> None:
    q = quantization_of(versions["int8"])
    timing = q["weight_zero_point_timing"]
    assert timing["batches"] == [1, 8]
    zero, shifted = timing["ms_per_image_zero_point_0"], timing["ms_per_image_zero_point_-1"]
    assert min(zero, shifted) > 0
    want = SHIFTED_ZERO_POINT if zero / shifted >= SHIFT_MIN_GAIN else 0
    assert q["weight_zero_point"] == want
    assert weight_zero_points(onnx.load(str(versions["int8"] / "model.onnx"))) == {want}


IMAGES_64 = np.random.default_rng(0).standard_normal((16, 3, 64, 64)).astype(np.float32)


@pytest.fixture(scope="module")
def quantized_net(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CNN (stem 7x7/2, a 16 -> 16 conv, a 16 -> 32 conv, a linear head) as
    `quantize_static` writes it: per-channel int8 weights, zero point 0."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 7, stride=2, padding=3), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10),
    ).eval()  # fmt: skip
    folder = tmp_path_factory.mktemp("quantized")
    source, quantized = folder / "net.onnx", folder / "int8.onnx"
    torch.onnx.export(
        net, (torch.from_numpy(IMAGES_64),), str(source), input_names=["input"],
        output_names=["logits"],
    )  # fmt: skip

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"input": IMAGES_64}])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    quantize_static(
        str(source), str(quantized), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )  # fmt: skip
    return quantized


def test_shifted_weight_zero_points_compute_the_same_bits(quantized_net: Path) -> None:
    """Weights one lower with zero point -1 dequantize to the same floats: ONNX Runtime's
    integer kernels, whichever it picks, give the same logits to the bit."""
    model = onnx.load(str(quantized_net))
    assert weight_zero_points(model) == {0}
    assert shift_weight_zero_points(model) == 4  # three convs and the linear layer
    assert weight_zero_points(model) == {SHIFTED_ZERO_POINT}
    assert shift_weight_zero_points(model) == 0  # already shifted: nothing to do
    want = run_onnx(ort_session(quantized_net), IMAGES_64)["logits"]
    got = run_onnx(ort_session(model.SerializeToString()), IMAGES_64)["logits"]
    assert np.array_equal(got, want)


def test_a_shared_zero_point_is_not_shifted(quantized_net: Path) -> None:
    """Two weights reading one zero-point tensor: shifting the tensor for one would move the
    other's floats, so neither is shifted; the rest are, and the logits stay the same."""
    model = onnx.load(str(quantized_net))
    initializers = {t.name: t for t in model.graph.initializer}
    sixteen = [
        node
        for node in model.graph.node
        if node.op_type == "DequantizeLinear"
        and node.input[0] in initializers
        and list(initializers[node.input[0]].dims[:2]) in ([16, 3], [16, 16])
    ]
    assert len(sixteen) == 2  # the stem and the 16 -> 16 conv: 16 output channels each
    sixteen[1].input[2] = sixteen[0].input[2]
    want = run_onnx(ort_session(model.SerializeToString()), IMAGES_64)["logits"]
    assert shift_weight_zero_points(model) == 2
    values = {name: numpy_helper.to_array(initializers[name]) for name in initializers}
    assert not values[sixteen[0].input[2]].any()
    got = run_onnx(ort_session(model.SerializeToString()), IMAGES_64)["logits"]
    assert np.array_equal(got, want)


@pytest.fixture(scope="module")
def blank_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Eight black 28x28 images: activation ranges from them fit no real garment."""
    root = tmp_path_factory.mktemp("blank") / "all"
    root.mkdir()
    for i in range(8):
        Image.new("L", (28, 28), 0).save(root / f"{i}.png")
    return root.parent


@pytest.mark.slow
def test_gate_refuses_a_blank_calibration_and_writes_nothing(
    tiny_run: TrainResult, blank_tree: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    repo = tmp_path / "models"
    argv = ["--checkpoint", str(tiny_run.best_checkpoint), "--name", "blank", "--repository",
            str(repo), "--no-evaluate", "--parity-samples", "8", "--int8",
            "--calibration-data", f"imagefolder:{blank_tree}",
            "--gate-images", str(GATE_IMAGES)]  # fmt: skip
    caplog.set_level(logging.INFO)
    assert run_cli(export_cli, argv) == USER_ERROR_EXIT_CODE
    (error,) = error_lines(caplog)
    assert error.startswith("int8 accuracy gate refused: top-1 agreement ")
    assert "--accept-accuracy-loss" in error
    assert "\n" not in error
    assert not repo.exists()

    caplog.clear()
    assert run_cli(export_cli, [*argv, "--accept-accuracy-loss"]) == 0
    assert not error_lines(caplog)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("written anyway (--accept-accuracy-loss)" in w for w in warned), warned
    q = quantization_of(repo / "blank" / "1")
    assert q["gate"]["passed"] is False
    assert q["top1_agreement"] < MIN_AGREEMENT
    assert q["calibration"] == {
        "source": f"imagefolder:{blank_tree}, shuffled: the first 8",
        "images": 8,
    }


def test_int8_options_need_int8(tiny_run: TrainResult, tmp_path: Path) -> None:
    common = {"checkpoint": tiny_run.best_checkpoint, "name": "x", "repository": tmp_path}
    with pytest.raises(UserError, match="--calibration, --accept-accuracy-loss go with --int8"):
        export_main(ExportConfig(**common, calibration=8, accept_accuracy_loss=True))  # type: ignore[arg-type]
    with pytest.raises(UserError, match="one of --fp16 and --int8"):
        export_main(ExportConfig(**common, fp16=True, int8=True))  # type: ignore[arg-type]
    with pytest.raises(UserError, match="--gate-images goes with --int8"):
        import_main(ImportConfig(COMMITTED_LENET / "model.onnx", "x", tmp_path, gate_images=5))
    assert not list(tmp_path.iterdir())


def test_calibration_and_held_out_images_are_disjoint(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    photos = [Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) for _ in "ab"]
    calibration, held_out = photo_split(photos, 20, 30)
    assert (len(calibration), len(held_out)) == (20, 30)
    views = [np.asarray(v) for v in [*calibration.items, *held_out.items]]
    assert len({(v.shape, v.tobytes()) for v in views}) == 50  # no image in both sets
    for name, count in (("train", 6), ("val", 4)):
        for i in range(count):
            (tmp_path / "split" / name / "cat").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8)).save(tmp_path / "split" / name / "cat" / f"{i}.png")
    calibration, held_out = folder_split(f"imagefolder:{tmp_path / 'split'}", 5, None, ["cat"])
    assert all("train" in p.parts for p in calibration.items)  # type: ignore[union-attr]
    assert all("val" in p.parts for p in held_out.items)  # type: ignore[union-attr]
    assert (len(calibration), len(held_out), held_out.labels) == (5, 4, [0] * 4)
    for i in range(10):
        (tmp_path / "flat" / "dog").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "dog" / f"{i}.png")
    calibration, held_out = folder_split(f"imagefolder:{tmp_path / 'flat'}", 4, None, ["cat"])
    assert (len(calibration), len(held_out), held_out.labels) == (4, 6, None)  # no such label
    assert not set(calibration.items) & set(held_out.items)
    # A checkpoint trained on the same folder: its test split is held out, never calibrated on.
    test_split = image_paths(load_dataset(f"imagefolder:{tmp_path / 'flat'}", image_size=8).test)
    assert len(test_split) == 1  # 10 % of 10
    spec = f"imagefolder:{tmp_path / 'flat'}"
    calibration, _ = folder_split(spec, 10, 0, ["dog"], exclude=test_split)
    assert len(calibration) == 9
    assert not {p.resolve() for p in calibration.items} & test_split  # type: ignore[union-attr]


def fashion_tree(root: Path) -> tuple[Path, Path]:
    """Fashion-MNIST as PNG folders, class folders named as the labels file (a label of the
    dataset, T-shirt/top, cannot be a folder name): train/ from the training split, val/ from
    the test split. Returns (tree, labels file)."""
    names = [f"class-{i}" for i in range(10)]
    for split, count, train in (("train", TREE_TRAIN, True), ("val", TREE_VAL, False)):
        images, labels = load_fashion_mnist(train=train)
        for i in range(count):
            folder = root / split / names[int(labels[i])]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(folder / f"{i}.png")
    labels_file = root.parent / "labels.txt"
    labels_file.write_text("\n".join(names) + "\n", encoding="utf-8")
    return root, labels_file


@pytest.mark.slow
def test_import_of_the_committed_lenet_passes_the_gate_without_torch(
    fashion_dir: Path, tmp_path: Path
) -> None:
    tree, labels = fashion_tree(tmp_path / "fashion")
    meta = json.loads((COMMITTED_LENET / "metadata.json").read_text())
    preprocess = tmp_path / "pre.json"
    preprocess.write_text(json.dumps({**meta["preprocessing"], "color_mode": "L"}))
    repo = tmp_path / "models"
    argv = [str(COMMITTED_LENET / "model.onnx"), "--name", "lenet5-int8", "--repository",
            str(repo), "--labels", str(labels), "--preprocess", str(preprocess), "--int8",
            "--calibration-data", f"imagefolder:{tree}"]  # fmt: skip
    # The service extra alone: no torch, no tqdm (no bar), no scikit-learn, no sympy.
    blocked = ("torch", "torchvision", "tqdm", "sklearn", "sympy")
    code = (
        "import sys\n"
        + "".join(f"sys.modules[{name!r}] = None\n" for name in blocked)
        + "from training.cli import run_cli\n"
        "from training.import_onnx import cli\n"
        f"sys.exit(run_cli(cli, {argv!r}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "ERROR" not in done.stderr
    folder = repo / "lenet5-int8" / "1"
    assert metadata_of(folder).export.precision == "int8"
    q = quantization_of(folder)
    assert q["calibration"] == {
        "source": f"imagefolder:{tree} train/, {TREE_TRAIN} of {TREE_TRAIN}",
        "images": TREE_TRAIN,
    }
    assert q["evaluation"] == {
        "source": f"imagefolder:{tree} val/, {TREE_VAL} of {TREE_VAL}, labelled",
        "images": TREE_VAL,
    }
    assert q["top1_agreement"] >= MIN_AGREEMENT
    assert q["accuracy_float32"] > 0.85  # the committed model: about 0.92 on the test split
    assert q["accuracy_float32"] - q["accuracy_int8"] <= 0.01
    assert q["gate"]["passed"] is True


@pytest.mark.slow
def test_pretrained_weights_fall_back_to_the_photos(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "resnet18-random.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    repo = tmp_path / "models"
    caplog.set_level(logging.INFO)
    argv = ["--arch", "resnet18", "--weights", str(weights), "--name", "r18", "--repository",
            str(repo), "--parity-samples", "2", "--int8", "--calibration", "8",
            "--gate-images", "16", "--accept-accuracy-loss"]  # fmt: skip
    assert run_cli(export_cli, argv) == 0
    notices = [r.getMessage() for r in caplog.records if "no --calibration-data" in r.getMessage()]
    assert len(notices) == 1
    folder = repo / "r18" / "1"
    q = quantization_of(folder)
    assert q["calibration"] == {
        "source": "random crops of the bundled photos, seed 0: the first 8",
        "images": 8,
    }
    assert q["evaluation"] == {
        "source": "random crops of the bundled photos, seed 0: the next 16",
        "images": 16,
    }
    assert "accuracy_float32" not in q  # photos have no labels: agreement only
    meta = metadata_of(folder)
    assert meta.cam is not None
    weights_in_graph = [
        numpy_helper.to_array(t) for t in onnx.load(str(folder / "model.onnx")).graph.initializer
    ]
    assert any(w.dtype == np.int8 and w.ndim == 4 for w in weights_in_graph)
    # the 7x7/2 stem over RGB runs as SpaceToDepth + a 4x4 conv over 12 channels
    assert q["space_to_depth"] == ["model.conv1.weight"]
    graph = onnx.load(str(folder / "model.onnx")).graph
    assert [n.op_type for n in graph.node].count("SpaceToDepth") == 1


def small_rgb_graph(path: Path, *, opset: int) -> Path:
    """conv → relu → global pool → linear, 3×32×32 in, 4 classes, a dynamic batch, written with
    the legacy exporter at `opset`."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(8, 4),
    ).eval()  # fmt: skip
    torch.onnx.export(
        net, (torch.randn(1, 3, 32, 32),), str(path), dynamo=False, opset_version=opset,
        input_names=["input"], dynamic_axes={"input": {0: "batch"}},
    )  # fmt: skip
    return path


def test_a_graph_below_the_qdq_opset_is_converted_for_int8(tmp_path: Path) -> None:
    """Per-channel QDQ needs opset 13 (DequantizeLinear's axis): an older graph, as
    torchvision's and many exporters' defaults still write, is converted, not refused with a
    traceback from the quantized graph."""
    source = small_rgb_graph(tmp_path / "opset12.onnx", opset=12)
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\nd\n")
    preprocess = tmp_path / "pre.json"
    preprocess.write_text(
        json.dumps({"resize": 36, "center_crop": 32, "mean": [0.5] * 3, "std": [0.5] * 3})
    )
    repo = tmp_path / "models"
    argv = [str(source), "--name", "old", "--repository", str(repo), "--labels", str(labels),
            "--preprocess", str(preprocess), "--int8", "--calibration", "8", "--gate-images",
            "16", "--accept-accuracy-loss"]  # fmt: skip
    assert run_cli(import_cli, argv) == 0
    folder = repo / "old" / "1"
    assert metadata_of(folder).export.precision == "int8"
    graph = onnx.load(str(folder / "model.onnx"))
    assert next(o.version for o in graph.opset_import if o.domain in {"", "ai.onnx"}) >= 13
    assert any(node.op_type == "DequantizeLinear" for node in graph.graph.node)
    session = ort_session(folder / "model.onnx")
    (logits,) = session.run(["logits"], {"input": np.zeros((2, 3, 32, 32), np.float32)})
    assert logits.shape == (2, 4)


def test_a_quantized_graph_is_imported_as_int8_and_not_quantized_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An int8 version's own model.onnx: --int8 is one ERROR line (quantizing QDQ nodes again
    failed inside ONNX Runtime), and a plain import records it as int8, not float32."""
    source = small_rgb_graph(tmp_path / "float.onnx", opset=13)
    quantized = tmp_path / "int8.onnx"

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches = iter([{"input": np.random.default_rng(i).random((1, 3, 32, 32),
                                                                        np.float32)}
                                 for i in range(4)])  # fmt: skip

        def get_next(self) -> dict[str, Any] | None:
            return next(self.batches, None)

    quantize_static(str(source), str(quantized), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, weight_type=QuantType.QInt8)  # fmt: skip
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\nd\n")
    repo = tmp_path / "models"
    common = [str(quantized), "--repository", str(repo), "--labels", str(labels)]
    caplog.set_level(logging.ERROR)
    again = [*common, "--name", "again", "--int8", "--calibration", "8", "--gate-images", "8"]
    assert run_cli(import_cli, again) == USER_ERROR_EXIT_CODE
    (refusal,) = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "is int8 already: import it without --int8" in refusal
    assert not (repo / "again").exists()
    assert run_cli(import_cli, [*common, "--name", "plain"]) == 0
    assert metadata_of(repo / "plain" / "1").export.precision == "int8"
