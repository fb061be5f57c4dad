"""The GPU paths of service/runtime.py that can be checked without a GPU: provider resolution
(ORT's provider list is faked: a host without the CUDA or TensorRT provider cannot be produced
here), the run strategy per provider, the IO-binding run on a real CPU session, and the TensorRT
provider options."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service import runtime as rt
from service.errors import RepositoryError
from service.metadata import ModelMetadata
from service.runtime import CPU, CUDA, TENSORRT, Runtime, io_binding_device, resolve_providers
from service.settings import DEFAULT_TRT_CACHE_DIR, Settings
from tests.service.tiny_model import TinyModel


@dataclass
class FakeOrt:
    available: list[str] = field(default_factory=list)
    preloads: int = 0

    def preload_dlls(self) -> None:
        self.preloads += 1


@pytest.fixture
def offered(monkeypatch: pytest.MonkeyPatch) -> FakeOrt:
    """ORT's provider list as the test sets it; CUDA library preloads are counted, not done."""
    fake = FakeOrt()
    monkeypatch.setattr(rt.ort, "get_available_providers", lambda: list(fake.available))
    monkeypatch.setattr(rt.ort, "preload_dlls", fake.preload_dlls)
    return fake


@pytest.mark.parametrize(
    ("choice", "available", "gpu", "expected"),
    [
        ("tensorrt", [TENSORRT, CUDA, CPU], False, [TENSORRT, CUDA, CPU]),
        ("cuda", [TENSORRT, CUDA, CPU], False, [CUDA, CPU]),
        ("auto", [TENSORRT, CUDA, CPU], True, [CUDA, CPU]),  # TensorRT only when asked for
        ("auto", [CUDA, CPU], False, [CPU]),  # the CUDA EP is installed but no GPU is seen
        ("cpu", [TENSORRT, CUDA, CPU], True, [CPU]),
    ],
)
def test_providers_resolve_best_first(
    offered: FakeOrt,
    monkeypatch: pytest.MonkeyPatch,
    choice: rt.ProviderChoice,
    available: list[str],
    gpu: bool,
    expected: list[str],
) -> None:
    offered.available = available
    monkeypatch.setattr(rt, "gpu_present", lambda: gpu)
    assert resolve_providers(choice) == expected
    assert offered.preloads == (CUDA in expected)  # CUDA libraries are loaded only for a GPU


@pytest.mark.parametrize(("choice", "missing"), [("tensorrt", TENSORRT), ("cuda", CUDA)])
def test_a_demanded_provider_that_ort_lacks_refuses_to_start(
    offered: FakeOrt, choice: rt.ProviderChoice, missing: str
) -> None:
    offered.available = [p for p in (TENSORRT, CUDA, CPU) if p != missing]
    with pytest.raises(RepositoryError, match=f"CONVSERVE_PROVIDERS={choice} but ORT offers only"):
        resolve_providers(choice)
    assert offered.preloads == 0


def test_tensorrt_is_a_setting_choice() -> None:
    assert Settings(providers="tensorrt").providers == "tensorrt"
    assert Settings().trt_cache_dir == DEFAULT_TRT_CACHE_DIR


@pytest.mark.parametrize(
    ("provider", "device"),
    [(CUDA, "cuda"), (TENSORRT, "cuda"), (CPU, None), ("OpenVINOExecutionProvider", None)],
)
def test_io_binding_only_on_gpu_providers(provider: str, device: str | None) -> None:
    assert io_binding_device(provider) == device


def cpu_runtime(
    model: TinyModel, providers: list[str] | None = None, trt_cache_dir: Path | None = None
) -> Runtime:
    return Runtime(
        (model.path / "model.onnx").read_bytes(),
        model.metadata,
        providers=providers or [CPU],
        instances=1,
        intra_op_threads=1,
        trt_cache_dir=trt_cache_dir or DEFAULT_TRT_CACHE_DIR,
    )


def batch_of(metadata: ModelMetadata, size: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.standard_normal((size, *metadata.input.shape)).astype(np.float32)


def test_cpu_sessions_run_plainly(tiny_cnn: TinyModel) -> None:
    runtime = cpu_runtime(tiny_cnn)
    assert (runtime.provider, runtime.bind_device) == (CPU, None)


def test_io_binding_run_matches_plain_run(
    tiny_cnn: TinyModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CUDA branch's code on a real CPU session: only the device string differs."""
    runtime = cpu_runtime(tiny_cnn)
    meta = tiny_cnn.metadata
    batch = batch_of(meta, 5)
    wanted = [meta.output.name, meta.feature_maps[-1].output]
    plain = runtime.run(0, batch, wanted)
    runtime.bind_device = "cpu"

    def no_plain_run(*_args: object) -> None:
        raise AssertionError("session.run called on the IO-binding path")

    monkeypatch.setattr(runtime.sessions[0], "run", no_plain_run)
    bound = runtime.run(0, batch, wanted)
    assert list(bound) == wanted  # only the requested outputs, in order
    for name in wanted:
        assert bound[name].dtype == np.float32
        np.testing.assert_array_equal(bound[name], plain[name])
    logits_only = runtime.run(0, batch[:1], [meta.output.name])
    assert list(logits_only) == [meta.output.name]
    np.testing.assert_array_equal(logits_only[meta.output.name], plain[meta.output.name][:1])
    runtime.warm_up()  # every output through the binding, shapes checked against metadata


def test_tensorrt_options_follow_the_model(tiny_cnn: TinyModel, tmp_path: Path) -> None:
    meta = tiny_cnn.metadata
    options = rt.tensorrt_options(meta, tmp_path)
    assert options["trt_engine_cache_enable"] == "True"
    # Engines are cached per model file: another version never loads this one's engine.
    assert options["trt_engine_cache_path"] == str(tmp_path / meta.export.sha256[:16])
    channels, height, width = meta.input.shape
    assert options["trt_profile_min_shapes"] == f"input:1x{channels}x{height}x{width}"
    max_shape = f"input:{meta.max_batch_size}x{channels}x{height}x{width}"
    assert options["trt_profile_max_shapes"] == options["trt_profile_opt_shapes"] == max_shape
    assert options["trt_fp16_enable"] == "False"
    half = meta.model_copy(
        update={"export": meta.export.model_copy(update={"precision": "float16"})}
    )
    assert rt.tensorrt_options(half, tmp_path)["trt_fp16_enable"] == "True"


def test_tensorrt_request_without_tensorrt_falls_back_and_serves(
    tiny_cnn: TinyModel, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """ORT here offers the TensorRT provider but cannot load its libraries (no GPU): the session
    is built with the real TensorRT options, falls back to the CPU, says so, and runs plainly."""
    if rt.gpu_present():
        pytest.skip("a GPU is present: TensorRT may really load")
    runtime = cpu_runtime(tiny_cnn, [TENSORRT, CUDA, CPU], tmp_path / "trt")
    assert (runtime.provider, runtime.bind_device) == (CPU, None)
    assert (tmp_path / "trt" / tiny_cnn.metadata.export.sha256[:16]).is_dir()
    assert f"{TENSORRT} unavailable, running on {CPU}" in caplog.text
    runtime.warm_up()
    logits = runtime.run(0, batch_of(tiny_cnn.metadata, 2), [tiny_cnn.metadata.output.name])
    assert logits[tiny_cnn.metadata.output.name].shape == (2, tiny_cnn.metadata.num_classes)


@pytest.mark.anyio
async def test_demanding_tensorrt_without_a_gpu_refuses_to_load(
    tiny_repo: Path, tmp_path: Path
) -> None:
    """CONVSERVE_PROVIDERS=tensorrt is a demand: the manager passes it (and the engine cache
    folder) to the runtime, which refuses a session that fell back to the CPU."""
    from service.manager import ModelManager
    from service.metrics import Metrics

    if TENSORRT not in ort.get_available_providers():
        pytest.skip("this ONNX Runtime build does not list TensorRT")
    settings = Settings(
        model_repository=tiny_repo, models="tiny-cnn", providers="tensorrt", trt_cache_dir=tmp_path
    )
    manager = ModelManager(settings, Metrics())
    await manager.sync()
    assert not manager.is_ready()
    messages = [message for _, message in manager.errors.values()]
    assert any("GPU provider was required" in m for m in messages), messages
    await manager.close()
