"""ONNX Runtime sessions for one model version: provider choice, validation, warm-up, run.

`instances` sessions of the same model each run one batch at a time; ORT releases the GIL, so
they run in parallel in worker threads (never on the event loop).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Literal

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from service.errors import RepositoryError
from service.metadata import ModelMetadata

logger = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
ProviderChoice = Literal["auto", "cuda", "cpu"]
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
    """ORT providers to request for `choice`; RepositoryError when CUDA is demanded but absent."""
    available = ort.get_available_providers()
    if choice == "cpu":
        return [CPU]
    if choice == "cuda":
        if CUDA not in available:
            raise RepositoryError(f"CONVSERVE_PROVIDERS=cuda but ORT offers only {available}")
        _preload_cuda_libraries()
        return [CUDA, CPU]
    if CUDA in available and gpu_present():
        _preload_cuda_libraries()
        return [CUDA, CPU]
    return [CPU]


def _preload_cuda_libraries() -> None:
    """Load CUDA/cuDNN from the nvidia-* wheels: without torch nothing else loads them."""
    try:
        ort.preload_dlls()
    except (OSError, RuntimeError) as err:  # the system's libraries may still be found
        logger.warning("could not preload CUDA libraries from the nvidia wheels: %s", err)


class InjectedFault(RuntimeError):
    """Raised by FaultInjector in place of a real ONNX Runtime failure (tests only)."""


class FaultInjector:
    """TESTING ONLY (CONVSERVE_FAULT_INJECTION): the next `count` batches of the process raise
    (mode "raise") or hang for `stall_s` seconds (mode "stall") inside `Runtime.run`, where an
    ONNX Runtime failure or a hung session would. Warm-ups are never hit."""

    def __init__(self, mode: str, count: int, stall_s: float) -> None:
        self.mode = mode
        self.remaining = count
        self.stall_s = stall_s
        self._lock = threading.Lock()

    def before_run(self) -> None:
        with self._lock:
            if self.remaining <= 0:
                return
            self.remaining -= 1
        logger.warning("fault injection: %s (%d left)", self.mode, self.remaining)
        if self.mode == "raise":
            raise InjectedFault("injected runtime fault (CONVSERVE_FAULT_INJECTION)")
        time.sleep(self.stall_s)


class Runtime:
    """`instances` InferenceSessions of one ONNX model, validated against its metadata.

    A session that failed or hung is replaced by `recreate(instance)`; the model bytes are kept
    for that (they are already in memory: sessions are built from bytes, never from a path).
    """

    def __init__(
        self,
        onnx_bytes: bytes,
        metadata: ModelMetadata,
        *,
        providers: Sequence[str],
        instances: int,
        intra_op_threads: int,
        require_cuda: bool = False,
        faults: FaultInjector | None = None,
    ) -> None:
        self.metadata = metadata
        self.faults = faults
        self._onnx_bytes = onnx_bytes
        self._providers = list(providers)
        self._intra_op_threads = intra_op_threads
        self.sessions = [
            self._session(onnx_bytes, providers, intra_op_threads) for _ in range(instances)
        ]
        self.provider: str = self.sessions[0].get_providers()[0]
        if providers[0] == CUDA and self.provider != CUDA:
            if require_cuda:
                raise RepositoryError("CONVSERVE_PROVIDERS=cuda but the CUDA provider failed")
            logger.warning("%s: CUDA unavailable, running on %s", metadata.name, self.provider)
        self._validate_io()

    @staticmethod
    def _session(
        onnx_bytes: bytes, providers: Sequence[str], intra_op_threads: int
    ) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle intra-op threads sleep instead of spinning: on a few shared cores, spinning
        # threads starve HTTP handling and image decoding (measured in docs/service.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            # Loaded from bytes: there is no model path, so ORT cannot open external data files.
            return ort.InferenceSession(onnx_bytes, sess_options=options, providers=list(providers))
        except (RuntimeError, ValueError) as err:
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

    def run(self, instance: int, batch: npt.NDArray[np.float32], outputs: Sequence[str]) -> Outputs:
        """Run `batch` (N, C, H, W) float32 on one session; only `outputs` are computed."""
        if self.faults is not None:
            self.faults.before_run()
        return self._run(self.sessions[instance], batch, outputs)

    def recreate(self, instance: int) -> None:
        """Replace one session with a fresh, warmed-up one (after it failed or hung)."""
        session = self._session(self._onnx_bytes, self._providers, self._intra_op_threads)
        self._check_outputs(session)
        self.sessions[instance] = session

    def _run(
        self, session: ort.InferenceSession, batch: npt.NDArray[np.float32], outputs: Sequence[str]
    ) -> Outputs:
        values = session.run(list(outputs), {self.metadata.input.name: batch})
        return {
            name: np.asarray(v, dtype=np.float32) for name, v in zip(outputs, values, strict=True)
        }

    def warm_up(self) -> None:
        """Run every session once with all outputs and check the shapes metadata promises."""
        for session in self.sessions:
            self._check_outputs(session)

    def _check_outputs(self, session: ort.InferenceSession) -> None:
        meta = self.metadata
        batch = np.zeros((2, *meta.input.shape), dtype=np.float32)
        wanted = [meta.output.name, *(fm.output for fm in meta.feature_maps)]
        expected: dict[str, tuple[int, ...]] = {meta.output.name: (2, meta.num_classes)}
        expected.update({fm.output: (2, *fm.shape) for fm in meta.feature_maps})
        for name, value in self._run(session, batch, wanted).items():
            if value.shape != expected[name]:
                raise RepositoryError(
                    f"output {name} has shape {value.shape}, metadata says {expected[name]}"
                )
