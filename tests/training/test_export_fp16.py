"""`training.export --fp16`: float16 weights and compute, float32 inputs and outputs, parity within
the float16 tolerance, and a version the service loads and classifies with (LeNet-5, 28x28)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from service import metadata as schema
from service.repository import VersionRef, load_version
from service.runtime import CPU, Runtime
from tests.training.conftest import fashion_samples
from training.checkpoint import load_checkpoint, model_from_checkpoint, preprocessing_of
from training.errors import UserError
from training.export import ExportConfig, ExportSpec, stage_and_publish
from training.export import main as export_main
from training.export_fp16 import FP16_PARITY_TOLERANCE
from training.onnx_check import PARITY_TOLERANCE, ort_session, parity_errors, run_onnx
from training.onnx_io import FeatureMapModel, torch_outputs
from training.train import TrainResult

SAMPLES = 64
FLOAT = onnx.TensorProto.FLOAT
FLOAT16 = onnx.TensorProto.FLOAT16


@pytest.fixture(scope="module")
def versions(tiny_run: TrainResult, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny LeNet-5 exported twice into one repository: 1 = float32, 2 = --fp16."""
    repository = tmp_path_factory.mktemp("fp16-repo")
    folders = {}
    for precision, fp16 in (("float32", False), ("float16", True)):
        config = ExportConfig(
            checkpoint=tiny_run.best_checkpoint,
            name="tiny",
            repository=repository,
            evaluate=False,
            parity_samples=8,
            fp16=fp16,
        )
        folders[precision] = export_main(config)
    return folders


def metadata_of(folder: Path) -> schema.ModelMetadata:
    return schema.ModelMetadata.model_validate_json((folder / "metadata.json").read_text())


def cast_target(node: onnx.NodeProto) -> int:
    return int(next(a.i for a in node.attribute if a.name == "to"))


def test_graph_holds_float16_weights_and_compute(versions: dict[str, Path]) -> None:
    graph = onnx.load(str(versions["float16"] / "model.onnx")).graph
    float_types = {t.data_type for t in graph.initializer} & {FLOAT, FLOAT16}
    assert float_types == {FLOAT16}  # every weight, bias and batch-norm statistic
    # float16 everywhere between two kinds of Cast: the input down once, each output up once.
    casts = [n for n in graph.node if n.op_type == "Cast"]
    assert [n.input[0] for n in casts if cast_target(n) == FLOAT16] == ["input"]
    assert sorted(n.output[0] for n in casts if cast_target(n) == FLOAT) == sorted(
        o.name for o in graph.output
    )
    assert len(casts) == 1 + len(graph.output)
    fp32_bytes = (versions["float32"] / "model.onnx").stat().st_size
    assert (versions["float16"] / "model.onnx").stat().st_size < 0.6 * fp32_bytes


def test_inputs_and_outputs_stay_float32(versions: dict[str, Path]) -> None:
    half, full = (ort_session(versions[p] / "model.onnx") for p in ("float16", "float32"))
    assert [(i.name, i.type, i.shape) for i in half.get_inputs()] == [
        (i.name, i.type, i.shape) for i in full.get_inputs()
    ]
    assert [(o.name, o.type) for o in half.get_outputs()] == [
        (o.name, o.type) for o in full.get_outputs()
    ]
    assert {o.type for o in half.get_outputs()} == {"tensor(float)"}


def test_metadata_records_precision_and_its_tolerance(versions: dict[str, Path]) -> None:
    half, full = metadata_of(versions["float16"]), metadata_of(versions["float32"])
    assert (half.export.precision, full.export.precision) == ("float16", "float32")
    extra = half.export.model_extra or {}
    assert extra["parity_tolerance"] == FP16_PARITY_TOLERANCE
    # float16 rounding is really there (far above float32's ~1e-7), and within its tolerance.
    assert 100 * full.export.parity_max_abs_diff < half.export.parity_max_abs_diff
    assert half.export.parity_max_abs_diff <= FP16_PARITY_TOLERANCE
    assert half.feature_maps == full.feature_maps


def test_parity_on_real_images_within_the_fp16_tolerance(
    tiny_run: TrainResult, versions: dict[str, Path]
) -> None:
    content = load_checkpoint(tiny_run.best_checkpoint)
    model = model_from_checkpoint(content).eval()
    images = fashion_samples(preprocessing_of(content), SAMPLES)
    layers = [fm.layer for fm in metadata_of(versions["float16"]).feature_maps]
    reference = torch_outputs(FeatureMapModel(model, layers), images)
    outputs = {
        p: run_onnx(ort_session(folder / "model.onnx"), images.numpy())
        for p, folder in versions.items()
    }
    errors = {p: parity_errors(reference, got) for p, got in outputs.items()}
    assert set(errors["float16"]) == {"logits", *(f"fm.{layer}" for layer in layers)}
    assert max(errors["float16"].values()) <= FP16_PARITY_TOLERANCE
    assert max(errors["float32"].values()) <= PARITY_TOLERANCE
    half_probs = torch.softmax(torch.from_numpy(outputs["float16"]["logits"]), dim=1)
    probs = torch.softmax(torch.from_numpy(reference["logits"]), dim=1)
    assert float((half_probs - probs).abs().max()) <= FP16_PARITY_TOLERANCE


def test_float32_tolerance_refuses_a_float16_graph(tiny_run: TrainResult, tmp_path: Path) -> None:
    """Why --fp16 has its own tolerance: its rounding error is above float32's 1e-4."""
    content = load_checkpoint(tiny_run.best_checkpoint)
    pre = preprocessing_of(content)
    spec = ExportSpec(
        name="strict",
        version=1,
        arch=content["arch"],
        labels=list(content["labels"]),
        preprocessing=pre,
        layers=["features.relu2"],
        precision="float16",
    )
    assert spec.parity_tolerance == FP16_PARITY_TOLERANCE
    model = model_from_checkpoint(content)
    strict = replace(spec, tolerance=PARITY_TOLERANCE)
    with pytest.raises(UserError, match=r"float16, tolerance 0\.0001"):
        stage_and_publish(model, strict, fashion_samples(pre, 8), tmp_path, force=False)
    assert not (tmp_path / "strict" / "1").exists()


def test_service_loads_and_classifies_the_fp16_version(
    tiny_run: TrainResult, versions: dict[str, Path]
) -> None:
    runtimes = {}
    for precision, folder in versions.items():
        files = load_version(folder.parents[1], VersionRef("tiny", int(folder.name), folder))
        runtime = Runtime(
            files.onnx_bytes, files.metadata, providers=[CPU], instances=1, intra_op_threads=1
        )
        runtime.warm_up()  # every output, shapes checked against metadata
        runtimes[precision] = runtime
    assert runtimes["float16"].provider == CPU
    content = load_checkpoint(tiny_run.best_checkpoint)
    batch = fashion_samples(preprocessing_of(content), SAMPLES).numpy()
    wanted = ["logits", "fm.features.conv1"]
    half = runtimes["float16"].run(0, batch, wanted)
    full = runtimes["float32"].run(0, batch, wanted)
    assert half.keys() == full.keys() == set(wanted)
    assert all(half[name].dtype == np.float32 for name in wanted)
    assert half["fm.features.conv1"].shape == (SAMPLES, 6, 28, 28)
    # Same classes as float32 unless the top two were closer than float16 can tell apart.
    top2 = np.sort(full["logits"], axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > FP16_PARITY_TOLERANCE * np.abs(top2[:, 1]).clip(min=1)
    assert clear.sum() >= SAMPLES // 2
    assert np.array_equal(
        half["logits"][clear].argmax(axis=1), full["logits"][clear].argmax(axis=1)
    )
