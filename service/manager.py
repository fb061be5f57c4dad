"""Loaded model versions: initial load, hot reload by polling, leases, draining.

A request holds a lease on one `LoadedVersion` from decode to response. Reload swaps the table
entry first and closes the old version only when its last lease is returned, so in-flight
requests finish on the old session and no request fails because of a reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

from service import repository
from service.batching import Batcher
from service.errors import (
    BadRequest,
    ModelNotFound,
    NotReady,
    RepositoryError,
    VersionNotFound,
)
from service.faults import FaultInjector
from service.metadata import ModelMetadata
from service.metrics import Metrics, Predictions
from service.repository import Fingerprint, VersionRef
from service.runtime import ONE_INSTANCE_BELOW_S, ORT_ERRORS, Runtime, resolve_providers
from service.settings import Settings

logger = logging.getLogger(__name__)
ABSENT_SCANS_BEFORE_REMOVAL = 2


def one_line(message: str) -> str:
    """`message` with its line breaks and runs of spaces made single spaces: ONNX Runtime's
    messages span lines, and /health/ready lists one line per problem."""
    return " ".join(message.split())


@dataclass(eq=False)
class LoadedVersion:
    ref: VersionRef
    fingerprint: Fingerprint
    metadata: ModelMetadata
    runtime: Runtime
    batcher: Batcher
    cam_weights: npt.NDArray[np.float32] | None
    predictions: Predictions
    leases: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def path(self) -> Path:
        return self.ref.path


class ModelManager:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.root = settings.model_repository
        self.providers = resolve_providers(settings.providers)
        self.provider: str | None = None  # the provider sessions actually got
        self.loaded: dict[tuple[str, int], LoadedVersion] = {}
        self.errors: dict[tuple[str, int], tuple[Fingerprint, str]] = {}
        self.scan_problems: list[str] = []
        self.initial_load_done = False
        self._lock = asyncio.Lock()
        self._closing: set[asyncio.Task[None]] = set()
        self._absent: dict[tuple[str, int], int] = {}
        # Repository extension (v2 load/unload): models unloaded by an admin are skipped by
        # every sync and leave the configured set; models loaded by name beyond CONVSERVE_MODELS
        # join it.
        self.unloaded: set[str] = set()
        self._loaded_by_name: set[str] = set()
        # Models found by the initial load (loaded or not): without CONVSERVE_MODELS, those
        # readiness waits for. A model first found by a later poll counts once it has loaded.
        self._found_at_start: set[str] | None = None
        # Testing only (docs/security.md): one injector for every model of the process.
        self.faults = FaultInjector.from_spec(settings.fault_injection, settings.batch_timeout_s)

    # --- queries -------------------------------------------------------------------------
    def versions(self, model: str) -> list[int]:
        return sorted(v for (m, v) in self.loaded if m == model)

    def model_names(self) -> list[str]:
        return sorted({m for (m, _) in self.loaded})

    def knows(self, model: str) -> bool:
        """Loaded, failed to load, or configured: a name that may label metrics (a name a
        client made up must not mint a series)."""
        return (
            any(m == model for (m, _) in self.loaded)
            or any(m == model for (m, _) in self.errors)
            or model in self.settings.model_names
        )

    def configured_models(self) -> list[str]:
        """Models that must be loaded for readiness: the configured list, else every one the
        initial load found and every one loaded since. A model that a poll finds later and
        cannot load is reported (`errors`) but does not take the whole server out of its load
        balancer: the models it served before go on being served."""
        if self.settings.model_names:
            names = [*self.settings.model_names, *sorted(self._loaded_by_name)]
            return [m for m in dict.fromkeys(names) if m not in self.unloaded]
        failed = {m for (m, _) in self.errors}
        if self._found_at_start is not None:
            failed &= self._found_at_start
        return sorted(({m for (m, _) in self.loaded} | failed) - self.unloaded)

    def _scan_only(self) -> list[str] | None:
        if not self.settings.model_names:
            return None
        return [*self.settings.model_names, *sorted(self._loaded_by_name)]

    def missing_models(self) -> list[str]:
        return [m for m in self.configured_models() if not self.versions(m)]

    def unavailable_models(self) -> list[str]:
        """Models whose every session is being recreated after a runtime fault."""
        serving = {m for (m, _), v in self.loaded.items() if v.batcher.pool.available}
        return [m for m in self.model_names() if m not in serving]

    def is_ready(self) -> bool:
        return (
            self.initial_load_done
            and bool(self.loaded)
            and not self.missing_models()
            and not self.unavailable_models()
        )

    def get(self, model: str, version: int | None = None) -> LoadedVersion:
        versions = self.versions(model)
        if not versions:
            if not self.initial_load_done:
                raise NotReady(f"model {model!r} is still loading", model=model)
            raise ModelNotFound(f"model {model!r} is not loaded", model=model)
        chosen = versions[-1] if version is None else version
        if chosen not in versions:
            raise VersionNotFound(
                f"model {model!r} has no loaded version {version} (loaded: {versions})",
                model=model,
            )
        return self.loaded[(model, chosen)]

    @contextlib.asynccontextmanager
    async def lease(self, model: str, version: int | None = None) -> AsyncIterator[LoadedVersion]:
        """Hold a version for a whole request; it is not closed before the lease ends."""
        loaded = self.get(model, version)
        loaded.leases += 1
        loaded.idle.clear()
        try:
            yield loaded
        finally:
            loaded.leases -= 1
            if loaded.leases == 0:
                loaded.idle.set()

    # --- loading -------------------------------------------------------------------------
    async def sync(self) -> None:
        """Bring the loaded table in line with the repository (initial load and every poll).
        A version that fails to load, whatever it raises, is reported and skipped."""
        async with self._lock:
            try:
                await self._sync()
            finally:  # even past an unforeseen error: readiness then says what is missing
                if not self.initial_load_done:
                    self._found_at_start = {m for (m, _) in (*self.loaded, *self.errors)}
                self.initial_load_done = True

    async def _sync(self) -> None:
        try:
            refs, problems = await asyncio.to_thread(repository.scan, self.root, self._scan_only())
        except OSError as err:  # e.g. the folder unreadable: what is served keeps serving
            message = one_line(f"model repository {self.root}: {err}")
            if [message] != self.scan_problems:
                logger.error("%s", message)
            self.scan_problems = [message]
            return
        refs = [r for r in refs if r.model not in self.unloaded]
        for problem in problems:
            if problem not in self.scan_problems:  # logged once, listed while it lasts
                logger.warning("model repository: %s", problem)
        self.scan_problems = problems
        seen = {(r.model, r.version) for r in refs}
        for ref in refs:
            await self._sync_version(ref)
        for key in [k for k in self.loaded if k not in seen]:
            # Absent from two scans in a row: an exporter replacing a version
            # (rmtree + rename) must not make it vanish for a poll interval.
            self._absent[key] = self._absent.get(key, 0) + 1
            if self._absent[key] >= ABSENT_SCANS_BEFORE_REMOVAL:
                logger.info("model %s version %d removed from the repository", *key)
                self._retire(self.loaded.pop(key))
        self._absent = {k: n for k, n in self._absent.items() if k in self.loaded and k not in seen}
        for key in [k for k in self.errors if k not in seen]:
            del self.errors[key]
            self._forget_failed(key)

    async def _sync_version(self, ref: VersionRef) -> None:
        key = (ref.model, ref.version)
        try:
            fp = await asyncio.to_thread(repository.fingerprint, ref)
        except OSError as err:
            self.errors[key] = ((), one_line(f"{ref.model}/{ref.version}: {err}"))
            return
        current = self.loaded.get(key)
        if current is not None and current.fingerprint == fp:
            return
        if key in self.errors and self.errors[key][0] == fp:
            return  # same broken files: reported once, not retried until they change
        try:
            fresh = await self._load(ref, fp)
        except RepositoryError as err:
            # "<model>/<version>: ..." (load_version and _load prefix it)
            self._failed(key, fp, one_line(str(err)), current is None)
            return
        except Exception as err:  # noqa: BLE001 - any failure is this version's, never the sync's
            # Not foreseen (a model whose outputs are no tensors makes numpy raise TypeError):
            # the traceback goes to the log, one line to /health/ready.
            logger.error("loading %s/%d failed", ref.model, ref.version, exc_info=err)
            message = one_line(f"{ref.model}/{ref.version}: {type(err).__name__}: {err}")
            self._failed(key, fp, message, current is None)
            return
        self.errors.pop(key, None)
        self._forget_failed(key)
        self.loaded[key] = fresh
        self.metrics.set_ready(ref.model, ref.version, fresh.runtime.provider, ready=True)
        logger.info(
            "loaded %s version %d (%s, %s, %d classes, feature maps: %s)",
            ref.model,
            ref.version,
            fresh.metadata.architecture,
            fresh.runtime.provider,
            fresh.metadata.num_classes,
            ", ".join(fm.layer for fm in fresh.metadata.feature_maps) or "none",
        )
        if current is not None:
            logger.info("model %s version %d changed: reloaded", *key)
            self._retire(current, keep_ready_metric=True)

    async def _load(self, ref: VersionRef, fp: Fingerprint) -> LoadedVersion:
        s = self.settings
        files = await asyncio.to_thread(repository.load_version, self.root, ref)

        def build() -> Runtime:
            runtime = Runtime(
                files.onnx_bytes,
                files.metadata,
                providers=self.providers,
                instances=s.effective_instances,
                intra_op_threads=s.effective_intra_op_threads,
                solo_threads=s.solo_threads,
                one_instance_below_s=0.0 if s.instances else ONE_INSTANCE_BELOW_S,
                require_gpu=s.providers in {"cuda", "tensorrt"},
                faults=self.faults,
                trt_cache_dir=s.trt_cache_dir,
            )
            runtime.warm_up()
            return runtime

        where = f"{ref.model}/{ref.version}"
        try:
            runtime = await asyncio.to_thread(build)
        except RepositoryError as err:
            raise RepositoryError(f"{where}: {err}") from err
        except ORT_ERRORS as err:  # a graph ONNX Runtime cannot run: a failed load, reported
            raise RepositoryError(f"{where}: warm-up failed: {err}") from err
        self.provider = runtime.provider
        meta = files.metadata
        batcher = Batcher(
            runtime,
            model=ref.model,
            required_outputs=[meta.output.name],
            max_batch_size=min(s.max_batch_size, meta.max_batch_size, s.max_queue_size),
            max_queue_delay_s=s.max_queue_delay_ms / 1000.0,
            max_batch_compute_s=s.max_batch_compute_ms / 1000.0,
            max_queue_size=s.max_queue_size,
            metrics=self.metrics,
            batch_timeout_s=s.batch_timeout_s,
        )
        predictions = self.metrics.prediction_series(ref.model, ref.version, meta.labels)
        loaded = LoadedVersion(ref, fp, meta, runtime, batcher, files.cam_weights, predictions)
        loaded.idle.set()
        return loaded

    def _failed(self, key: tuple[str, int], fp: Fingerprint, message: str, unserved: bool) -> None:
        """Record a version that failed to load: logged, listed in /health/ready's errors and,
        when no older session of it serves (`unserved`), 0 in `convserve_model_ready`."""
        self.errors[key] = (fp, message)
        logger.error("skipping %s", message)
        if unserved:  # a broken change keeps the old session serving (and ready)
            self.metrics.set_ready(key[0], key[1], self.providers[0], ready=False)

    def _forget_failed(self, key: tuple[str, int]) -> None:
        """Drop the 0 that `convserve_model_ready` shows for a version that failed to load."""
        self.metrics.forget_ready(key[0], key[1], self.providers[0])

    def _retire(self, old: LoadedVersion, *, keep_ready_metric: bool = False) -> None:
        if not keep_ready_metric:
            self.metrics.forget_ready(old.ref.model, old.ref.version, old.runtime.provider)
        task = asyncio.get_running_loop().create_task(self._close_when_idle(old))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close_when_idle(self, old: LoadedVersion) -> None:
        await old.idle.wait()
        await old.batcher.close()
        ref = old.ref
        current = self.loaded.get((ref.model, ref.version))
        if current is None:
            self.metrics.forget_predictions(ref.model, ref.version, old.metadata.labels)
        else:  # changed in place: the new session shares the series of the labels it kept
            kept = set(current.metadata.labels)
            dropped = [label for label in old.metadata.labels if label not in kept]
            self.metrics.forget_predictions(ref.model, ref.version, dropped, confidence=False)
        logger.info("closed old session of %s version %d", ref.model, ref.version)

    # --- repository extension (v2 load / unload) --------------------------------------------
    async def load_model(self, model: str) -> None:
        """(Re)scan one model's versions and load them; it rejoins the configured set."""
        async with self._lock:
            refs, _ = await asyncio.to_thread(repository.scan, self.root, [model])
            if not refs:
                raise ModelNotFound(f"model {model!r} is not in the repository", model=model)
            self.unloaded.discard(model)
            if self.settings.model_names and model not in self.settings.model_names:
                self._loaded_by_name.add(model)
            for key in [k for k in self.errors if k[0] == model]:
                del self.errors[key]  # an explicit load retries versions that failed before
            seen = {(r.model, r.version) for r in refs}
            for ref in refs:
                await self._sync_version(ref)
            for key in [k for k in self.loaded if k[0] == model and k not in seen]:
                self._retire(self.loaded.pop(key))
        if not self.versions(model):
            problems = "; ".join(m for k, (_, m) in self.errors.items() if k[0] == model)
            raise BadRequest(f"failed to load {model!r}: {problems}", model=model)

    async def unload_model(self, model: str) -> None:
        """Stop serving `model`: new requests get 404; in-flight ones finish on its sessions."""
        async with self._lock:
            keys = [k for k in self.loaded if k[0] == model]
            failed = [k for k in self.errors if k[0] == model]
            if not keys and not failed and model not in self.configured_models():
                raise ModelNotFound(f"model {model!r} is not loaded", model=model)
            self.unloaded.add(model)
            self._loaded_by_name.discard(model)
            for key in keys:
                self._absent.pop(key, None)
                self._retire(self.loaded.pop(key))
            for key in failed:
                del self.errors[key]
                self._forget_failed(key)
        logger.info("model %s unloaded (versions %s)", model, [v for _, v in keys])

    async def poll(self, interval_s: float) -> None:
        """Re-sync every `interval_s` seconds until cancelled. A sync reports each version's
        failure itself; anything else it raises is logged and the next poll runs as usual."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.sync()
            except Exception:  # noqa: BLE001 - the poll must outlive any one sync
                logger.exception("repository poll failed")

    async def close(self) -> None:
        """Drain every batcher (finishing accepted work), then release the sessions."""
        for key in list(self.loaded):
            self._retire(self.loaded.pop(key))
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
