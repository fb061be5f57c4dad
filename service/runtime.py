"""ONNX Runtime sessions for one model version: provider choice, validation, warm-up, run.

`instances` sessions of the same model each run one batch at a time; ORT releases the GIL, so
they run in parallel in worker threads (never on the event loop). On a GPU provider (CUDA,
TensorRT) a batch runs through IO binding: the batch is bound as a host input, only the requested
outputs are bound on the device, and they are copied to the host once after the run. On the CPU
a plain `session.run` is used (no copies to save there, and it costs less per call).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from service.errors import RepositoryError
from service.faults import FaultInjector
from service.metadata import ModelMetadata
from service.settings import DEFAULT_TRT_CACHE_DIR

logger = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
GPU_PROVIDERS = frozenset({TENSORRT, CUDA})
# The solo session is kept where a batch of one runs on it in at most this share of the time it
# takes on an instance's own session (ResNet-18 here: 0.5; LeNet-5: 1.4, dropped).
SOLO_GAIN = 0.8
# Both sessions are timed in alternation, at least SOLO_TRIALS rounds and for SOLO_MIN_S (at most
# SOLO_MAX_TRIALS rounds), the fastest run of each compared: a disturbance (the decoders' warm-up,
# another model loading) then slows both. Timed one after the other, 3 runs each, LeNet-5's own
# session was once measured at 0.26 ms against 0.04 and the solo session kept: c=1 fell from
# ~1,950 to ~1,230 requests/s in-process.
SOLO_TRIALS = 5
SOLO_MAX_TRIALS = 50
SOLO_MIN_S = 0.05
# With the instance count left to the service (`instances=0`), a version whose batch of one
# computes in less than this keeps one instance: at LeNet-5's ~0.03 ms the event loop is the
# limit, and a second instance only splits what waits into smaller batches, each one more
# hand-off to a thread (one against two, 28x28 PNG: 1.20-1.32x the requests at 4 clients,
# 1.21-1.25x at 16, 1.03-1.08x at 64, level at 1; bench/tune.py, alternating).
ONE_INSTANCE_BELOW_S = 0.0005
# Warm-up runs this many images at once (never more than the model's max_batch_size): a batch
# above one checks that the batch axis really is dynamic.
WARM_UP_BATCH = 2
# What a session that cannot be created or run raises: ONNX Runtime's own exceptions derive from
# Exception, not RuntimeError (a fixed batch of 1 fed 2 images raises InvalidArgument; a file that
# is no ONNX graph InvalidProtobuf, a missing one NoSuchFile). The training side uses it too.
ORT_ERRORS: tuple[type[Exception], ...] = (
    RuntimeError,
    ValueError,
    ort_state.Fail,
    ort_state.InvalidArgument,
    ort_state.InvalidGraph,
    ort_state.InvalidProtobuf,
    ort_state.NoSuchFile,
    ort_state.NotImplemented,
    ort_state.RuntimeException,
)
ProviderChoice = Literal["auto", "cuda", "tensorrt", "cpu"]
ProviderEntry = str | tuple[str, dict[str, str]]  # a name, or (name, options) for InferenceSession
Outputs = dict[str, npt.NDArray[np.float32]]


def gpu_present() -> bool:
    """True when NVML sees at least one GPU (the CUDA EP is then worth trying)."""
    try:
        import pynvml
    except ImportError:
        return False
    try:
        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetCount()) > 0
    except pynvml.NVMLError:
        return False


def resolve_providers(choice: ProviderChoice) -> list[str]:
    """ORT providers to request for `choice`, best first; RepositoryError when `cuda` or
    `tensorrt` is demanded but ORT does not offer that provider."""
    available = ort.get_available_providers()
    if choice == "cpu":
        return [CPU]
    demanded = {"cuda": CUDA, "tensorrt": TENSORRT}.get(choice)
    if demanded is not None and demanded not in available:
        raise RepositoryError(f"CONVSERVE_PROVIDERS={choice} but ORT offers only {available}")
    if choice == "auto" and not (CUDA in available and gpu_present()):
        return [CPU]
    _preload_cuda_libraries()
    return [TENSORRT, CUDA, CPU] if choice == "tensorrt" else [CUDA, CPU]


def io_binding_device(provider: str) -> str | None:
    """The device IO binding puts outputs on for sessions running on `provider` ("cuda" for
    CUDA and TensorRT); None: run with plain `session.run` (the CPU provider)."""
    return "cuda" if provider in GPU_PROVIDERS else None


def tensorrt_options(metadata: ModelMetadata, cache_dir: Path) -> dict[str, str]:
    """TensorRT EP options: engines cached per model file (sha256: another model never reuses
    them), one optimisation profile from batch 1 to the model's max batch (no rebuild when the
    batch size changes), and float16 layers allowed only for a `--fp16` export."""
    name, (channels, height, width) = metadata.input.name, metadata.input.shape

    def shape(batch: int) -> str:
        return f"{name}:{batch}x{channels}x{height}x{width}"

    return {
        "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache_dir / metadata.export.sha256[:16]),
        "trt_timing_cache_enable": "True",
        "trt_timing_cache_path": str(cache_dir),
        "trt_profile_min_shapes": shape(1),
        "trt_profile_opt_shapes": shape(metadata.max_batch_size),
        "trt_profile_max_shapes": shape(metadata.max_batch_size),
        "trt_fp16_enable": str(metadata.export.precision == "float16"),
    }


def run_bound(
    session: ort.InferenceSession,
    input_name: str,
    batch: npt.NDArray[np.float32],
    outputs: Sequence[str],
    device: str,
    device_id: int = 0,
) -> list[npt.NDArray[np.float32]]:
    """One run through IO binding: `batch` bound as a host input (ORT copies it to the device
    once), only `outputs` bound, on `device`, then copied to the host once, in that order."""
    binding = session.io_binding()
    binding.bind_cpu_input(input_name, np.ascontiguousarray(batch))
    for name in outputs:
        binding.bind_output(name, device, device_id)
    session.run_with_iobinding(binding)
    values: list[npt.NDArray[np.float32]] = binding.copy_outputs_to_cpu()
    return values


def _preload_cuda_libraries() -> None:
    """Load CUDA/cuDNN from the nvidia-* wheels: without torch nothing else loads them."""
    try:
        ort.preload_dlls()
    except (OSError, RuntimeError) as err:  # the system's libraries may still be found
        logger.warning("could not preload CUDA libraries from the nvidia wheels: %s", err)


class Runtime:
    """`instances` InferenceSessions of one ONNX model, validated against its metadata.

    With `solo_threads` (on CPU) there is one more session, with that many intra-op threads, for
    a batch that starts while no other runs and no other work waits (`run`'s `alone`): a lone
    request then uses every core, while batches side by side, or beside images still being
    decoded, use their own narrower sessions instead of oversubscribing the cores. `warm_up`
    keeps it only where it is measured faster (not for a tiny model, whose batch of one gains
    nothing from a second thread).

    A session that failed or hung is replaced by `recreate(instance)`; the model bytes are kept
    for that (they are already in memory: sessions are built from bytes, never a path).
    `faults` (testing only) is consulted before each batch.
    """

    def __init__(
        self,
        onnx_bytes: bytes,
        metadata: ModelMetadata,
        *,
        providers: Sequence[str],
        instances: int,
        intra_op_threads: int,
        solo_threads: int = 0,
        one_instance_below_s: float = 0.0,
        require_gpu: bool = False,
        faults: FaultInjector | None = None,
        trt_cache_dir: Path = DEFAULT_TRT_CACHE_DIR,
    ) -> None:
        self.metadata = metadata
        self.faults = faults
        self._onnx_bytes = onnx_bytes
        self._providers = [self._provider_entry(name, trt_cache_dir) for name in providers]
        self._intra_op_threads = intra_op_threads
        self._one_instance_below_s = one_instance_below_s
        # A session that never runs beside another may spin (`_new_session`): the only
        # instance, and the solo session. One kept alone by `warm_up` was made not to.
        self._spin = instances == 1
        self.sessions = [
            self._new_session(intra_op_threads, spin=self._spin) for _ in range(instances)
        ]
        self.provider: str = self.sessions[0].get_providers()[0]
        if providers[0] != self.provider:
            if require_gpu and self.provider not in GPU_PROVIDERS:
                raise RepositoryError(
                    f"a GPU provider was required ({providers[0]}) but the session runs on "
                    f"{self.provider}: check the CUDA/cuDNN/TensorRT libraries and the GPU"
                )
            logger.warning(
                "%s: %s unavailable, running on %s", metadata.name, providers[0], self.provider
            )
        # Where IO binding puts outputs (None: plain session.run), and on which GPU.
        self.bind_device = io_binding_device(self.provider)
        options = self.sessions[0].get_provider_options().get(self.provider, {})
        self.device_id = int(options.get("device_id", 0))
        self._validate_io()
        self._solo_threads = solo_threads if self.provider == CPU else 0
        self.solo = self._new_session(self._solo_threads, spin=True) if self._solo_threads else None
        # The instances whose batch is running (one whose run hung stays until `recreate`), and
        # whether each instance's batch runs, or last ran, on the solo session.
        self._running: set[int] = set()
        self._on_solo = [False] * instances

    def _provider_entry(self, name: str, trt_cache_dir: Path) -> ProviderEntry:
        if name != TENSORRT:
            return name
        options = tensorrt_options(self.metadata, trt_cache_dir)
        engines = Path(options["trt_engine_cache_path"])
        try:  # ORT creates only the last folder of the path
            engines.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise RepositoryError(f"cannot create the TensorRT cache {engines}: {err}") from err
        return name, options

    def _new_session(self, intra_op_threads: int, *, spin: bool) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # `spin`: intra-op threads spin between the operators of a run (ResNet-18, one image on
        # 2 threads: 13.0 -> 12.0 ms) and sleep as soon as it ends (ORT's default spins on after
        # it: ~4 ms of CPU per 5 ms idle gap, taken from HTTP handling and decoding on a few
        # shared cores). Only for the sessions that run alone, the only instance and the solo
        # one (taken when no other batch runs): two spinning side by side would oversubscribe
        # the cores. Elsewhere idle threads sleep (docs/benchmarks.md, "Defaults").
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        options.add_session_config_entry("session.force_spinning_stop", "1")
        try:
            # Loaded from bytes: there is no model path, so ORT cannot open external data files.
            return ort.InferenceSession(
                self._onnx_bytes, sess_options=options, providers=list(self._providers)
            )
        except ORT_ERRORS as err:
            raise RepositoryError(f"ONNX Runtime refused the model: {err}") from err

    @property
    def instances(self) -> int:
        return len(self.sessions)

    def _validate_io(self) -> None:
        meta = self.metadata
        session = self.sessions[0]
        inputs = {i.name: i for i in session.get_inputs()}
        if meta.input.name not in inputs:
            raise RepositoryError(f"ONNX model has no input {meta.input.name!r}")
        shape = inputs[meta.input.name].shape
        if len(shape) != 4 or list(shape[1:]) != list(meta.input.shape):
            raise RepositoryError(f"ONNX input shape {shape} does not match {meta.input.shape}")
        names = {o.name for o in session.get_outputs()}
        wanted = [meta.output.name, *(fm.output for fm in meta.feature_maps)]
        missing = [n for n in wanted if n not in names]
        if missing:
            raise RepositoryError(f"ONNX model lacks outputs {missing}")

    def run(
        self,
        instance: int,
        batch: npt.NDArray[np.float32],
        outputs: Sequence[str],
        *,
        alone: bool = True,
    ) -> Outputs:
        """Run `batch` (N, C, H, W) float32 for `instance`: on the solo session when there is
        one, no other batch is running and the caller has no other work waiting (`alone`:
        under load the other cores decode the next images, and a second thread would take
        them), else on the instance's own; only `outputs` are computed."""
        solo, running = self.solo, self._running
        running.add(instance)  # set operations are atomic: two starting at once both see 2
        try:
            lone = alone and len(running) == 1
            session = solo if solo is not None and lone else self.sessions[instance]
            self._on_solo[instance] = session is solo
            if self.faults is not None:
                self.faults.before_run()
            return self._run(session, batch, outputs)
        finally:
            running.discard(instance)

    def recreate(self, instance: int) -> None:
        """Replace the session the instance's failed or hung batch ran on (its own, or the solo
        one: lone batches use the instances' own sessions meanwhile) with a fresh, checked one."""
        self._running.discard(instance)  # a hung run is abandoned
        if self._on_solo[instance] and self.solo is not None:
            self.solo = None
            session = self._new_session(self._solo_threads, spin=True)
            self._check_outputs(session)
            self.solo = session
            return
        session = self._new_session(self._intra_op_threads, spin=self._spin)
        self._check_outputs(session)
        self.sessions[instance] = session

    def _run(
        self, session: ort.InferenceSession, batch: npt.NDArray[np.float32], outputs: Sequence[str]
    ) -> Outputs:
        name = self.metadata.input.name
        if self.bind_device is None:
            values = session.run(list(outputs), {name: batch})
        else:
            values = run_bound(session, name, batch, outputs, self.bind_device, self.device_id)
        return {
            name: np.asarray(v, dtype=np.float32) for name, v in zip(outputs, values, strict=True)
        }

    def warm_up(self) -> None:
        """Run every session once with all outputs and check the shapes metadata promises; keep
        the solo session only if a batch of one runs at least SOLO_GAIN faster on it, and only
        the first instance if a batch of one computes in under `one_instance_below_s`."""
        solo = [self.solo] if self.solo is not None else []
        for session in (*self.sessions, *solo):
            self._check_outputs(session)
        fewer = self._one_instance_below_s > 0 and self.instances > 1
        if not solo and not fewer:
            return
        own_s, *solo_times = self._batch_of_one_s(self.sessions[0], *solo)
        if fewer and own_s < self._one_instance_below_s:
            logger.info(
                "%s: a batch of one computes in %.3f ms: one instance instead of %d",
                self.metadata.name,
                own_s * 1000,
                self.instances,
            )
            del self.sessions[1:], self._on_solo[1:]
        if self.solo is not None:
            solo_s = solo_times[0]
            kept = solo_s <= SOLO_GAIN * own_s
            logger.info(
                "%s: a batch of one takes %.2f ms on %d intra-op threads, %.2f ms on %d: lone "
                "batches run on %s",
                self.metadata.name,
                solo_s * 1000,
                self._solo_threads,
                own_s * 1000,
                self._intra_op_threads,
                f"{self._solo_threads} threads" if kept else "the instances' own sessions",
            )
            if not kept:
                self.solo = None

    def _batch_of_one_s(self, *sessions: ort.InferenceSession) -> list[float]:
        """The fastest run of one image (the class scores only) on each session, the sessions
        run in turn (SOLO_TRIALS to SOLO_MAX_TRIALS rounds, for at least SOLO_MIN_S)."""
        batch = np.zeros((1, *self.metadata.input.shape), dtype=np.float32)
        outputs = [self.metadata.output.name]
        best = [float("inf")] * len(sessions)
        started = time.perf_counter()
        for trial in range(SOLO_MAX_TRIALS):
            if trial >= SOLO_TRIALS and time.perf_counter() - started >= SOLO_MIN_S:
                break
            for index, session in enumerate(sessions):
                run_started = time.perf_counter()
                self._run(session, batch, outputs)
                best[index] = min(best[index], time.perf_counter() - run_started)
        return best

    def _check_outputs(self, session: ort.InferenceSession) -> None:
        meta = self.metadata
        size = min(WARM_UP_BATCH, meta.max_batch_size)
        batch = np.zeros((size, *meta.input.shape), dtype=np.float32)
        wanted = [meta.output.name, *(fm.output for fm in meta.feature_maps)]
        expected: dict[str, tuple[int, ...]] = {meta.output.name: (size, meta.num_classes)}
        expected.update({fm.output: (size, *fm.shape) for fm in meta.feature_maps})
        for name, value in self._run(session, batch, wanted).items():
            if value.shape != expected[name]:
                raise RepositoryError(
                    f"output {name} has shape {value.shape}, metadata says {expected[name]}"
                )
