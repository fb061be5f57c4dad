"""Service settings (docs/service.md, Settings): one pydantic-settings class, env prefix CONVSERVE_.

Each field is also a flag of `python -m service` (service/__main__.py), its description the
flag's help; `settings_env` writes the settings back as environment variables.
"""

from __future__ import annotations

import ipaddress
import resource
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.cpus import cpu_count
from service.faults import parse_fault_spec
from service.metadata import NAME_PATTERN, is_valid_name

ENV_PREFIX = "CONVSERVE_"
MIB = 1024 * 1024
# TensorRT builds an engine per model when a session starts; cached, later starts reuse it.
DEFAULT_TRT_CACHE_DIR = Path("/tmp/convserve-trt")
# Sessions per version by default: two side by side, one thread each on 2 cores
# (docs/benchmarks.md, "Defaults").
DEFAULT_INSTANCES = 2


# Descriptors kept free of connections (listening socket, event loop, logs, model files, GPU
# devices): the default connection cap is the RLIMIT_NOFILE soft limit less this, at least half.
FD_HEADROOM = 128
# The cap when the limit is unlimited.
UNLIMITED_FD_CONNECTIONS = 65_536


class Settings(BaseSettings):
    # No float setting means anything at infinity or NaN (a delay, a timeout, a budget).
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", allow_inf_nan=False)

    model_repository: Path = Field(Path("models"), description="Model repository root folder.")
    default_model: str = Field("lenet5-fashion", description="Model served by POST /v1/classify.")
    models: str = Field(
        "",
        description="Comma-separated models to load (empty: every model in the repository).",
    )
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: any free port).")
    api_key: SecretStr | None = Field(
        None,
        description="When set, /v1 routes need 'Authorization: Bearer <key>' or 'X-API-Key'.",
    )
    admin_key: SecretStr | None = Field(
        None, description="When set, enables the repository admin routes (unset: disabled)."
    )
    max_body_bytes: int = Field(16 * MIB, ge=1, description="Largest request body (413 above).")
    max_body_memory_bytes: int = Field(
        512 * MIB,
        ge=1,
        description="Request body bytes held at once per process, all requests together, from "
        "arrival until answered; a body that would take more is refused with 503 (at least "
        "MAX_BODY_BYTES).",
    )
    body_timeout_s: float = Field(
        30.0, ge=0, description="Longest time to receive a request body (408 after; 0: none)."
    )
    header_timeout_s: float = Field(
        5.0,
        ge=0,
        description="Longest time to receive a request's head (line and headers), from its "
        "first byte or the connection's opening: the connection is closed after (0: none).",
    )
    max_connections: int = Field(
        0,
        ge=0,
        description="Open connections per process; past it a new one closes the one waiting "
        "longest for its request head, or is refused with 503 (0: the file-descriptor limit "
        f"less {FD_HEADROOM}).",
    )
    jpeg_draft: bool = Field(
        True,
        description="Decode large JPEGs at 1/2, 1/4 or 1/8 scale in the DCT domain (shorter "
        "side kept >= 2.5x the model's resize): 4-5x faster on 12 MP photos, input within max 8 "
        "/ mean 0.6 of 255 levels of torchvision's; false: every input bit-exact.",
    )
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="Largest decoded image, width*height (400 above)."
    )
    max_decode_bytes: int = Field(
        256 * MIB,
        ge=1,
        description="Memory one image may take to decode and convert, estimated from its header "
        "(400 above); peak decode memory is about this times DECODE_THREADS.",
    )
    min_image_side: int = Field(
        8, ge=1, description="Smallest image width or height, in pixels (400 below)."
    )
    max_images_per_request: int = Field(256, ge=1, description="Images per classify request.")
    max_batch_size: int = Field(
        32, ge=1, description="Images per session.run call (capped by the model's metadata)."
    )
    max_batch_compute_ms: float = Field(
        50.0,
        ge=0,
        description="Cap a batch so its measured compute time stays within this (0: no cap): "
        "on CPU a float32 ResNet runs one or two images at a time, an int8 one a few, a tiny "
        "model batches fully.",
    )
    max_queue_delay_ms: float = Field(
        2.0, ge=0, description="Longest wait to fill a batch, applied only while busy."
    )
    max_queue_size: int = Field(512, ge=1, description="Pending images per version before 503.")
    max_inflight_requests: int = Field(
        256,
        ge=1,
        description="Inference requests in progress (decoding, queued, computing), each counted "
        "from when its whole body has arrived, before 503 (at once, unread, while all are taken).",
    )
    workers: int = Field(
        1,
        ge=1,
        description="Server processes sharing the port, each with its own models, batchers and "
        "event loop (>1: for small models on many cores; the repository load/unload routes "
        "are then refused, use MODEL_POLL_SECONDS).",
    )
    instances: int = Field(
        0,
        ge=0,
        description="ORT sessions per model version running at once (0: 2, or 1 for a model "
        "whose batch of one computes in under 0.5 ms: one keeps up with the event loop and "
        "gathers larger batches).",
    )
    intra_op_threads: int = Field(
        0,
        ge=0,
        description="ORT intra-op threads per session (0: cores / instances each, plus a session "
        "with every core for a batch running alone; idle threads sleep).",
    )
    decode_threads: int = Field(
        0, ge=0, description="Threads decoding and pre/post-processing images (0: cores)."
    )
    providers: Literal["auto", "cuda", "tensorrt", "cpu"] = Field(
        "auto",
        description="Execution provider: auto = CUDA when a GPU is present, else CPU; cuda and "
        "tensorrt (TensorRT, then CUDA for what it cannot run) refuse to start without it.",
    )
    trt_cache_dir: Path = Field(
        DEFAULT_TRT_CACHE_DIR,
        description="TensorRT engine and timing cache folder (providers=tensorrt); engines are "
        "kept per model file under it.",
    )
    request_timeout_ms: float = Field(
        0, ge=0, description="Default deadline before compute (0: none); X-Request-Timeout-Ms."
    )
    batch_timeout_s: float = Field(
        60.0,
        ge=0,
        description="Watchdog: a session.run taking longer fails its batch (504) and the "
        "session is recreated (0: off).",
    )
    shutdown_timeout_s: int = Field(
        30,
        ge=0,
        description="On SIGTERM, longest wait for accepted requests before exiting (0: no limit).",
    )
    cors_origins: str = Field(
        "",
        description="Comma-separated origins allowed by CORS, or '*' (empty: CORS off).",
    )
    fault_injection: str = Field(
        "",
        description="TESTING ONLY: 'raise:N' or 'stall:N' makes the next N batches fail or hang "
        "(refused unless HOST is loopback).",
    )
    model_poll_seconds: float = Field(
        0, ge=0, description="Repository poll interval for hot reload (0: no polling)."
    )
    log_format: Literal["text", "json"] = Field("text", description="Log line format.")
    opentelemetry: bool = Field(
        False,
        description="FastAPI's native OpenTelemetry spans, metrics and logs for every request, "
        "sent to the process's providers (e.g. FASTAPI_OTEL_AUTO_CONFIGURE=true with OTEL_* "
        "exporter settings); off: FastAPI does not look for providers on each request.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="Log level."
    )

    @field_validator("api_key", "admin_key", mode="before")
    @classmethod
    def _blank_key_is_unset(cls, value: object) -> object:
        """An empty key is no key (docker-compose.yml passes `${CONVSERVE_API_KEY:-}`): taken as
        set, it would lock every client out, since no header can carry an empty key."""
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("default_model")
    @classmethod
    def _a_model_name(cls, value: str) -> str:
        if not is_valid_name(value):
            raise ValueError(f"{value!r} can never name a model ({NAME_PATTERN})")
        return value

    @field_validator("models")
    @classmethod
    def _model_names(cls, value: str) -> str:
        bad = [n for n in (n.strip() for n in value.split(",")) if n and not is_valid_name(n)]
        if bad:
            raise ValueError(f"{', '.join(map(repr, bad))} can never name a model ({NAME_PATTERN})")
        return value

    @field_validator("fault_injection")
    @classmethod
    def _fault_spec(cls, value: str) -> str:
        if value:
            parse_fault_spec(value)
        return value

    @model_validator(mode="after")
    def _one_body_fits_in_memory(self) -> Settings:
        if self.max_body_memory_bytes < self.max_body_bytes:
            raise ValueError(
                f"CONVSERVE_MAX_BODY_MEMORY_BYTES ({self.max_body_memory_bytes}) is below "
                f"CONVSERVE_MAX_BODY_BYTES ({self.max_body_bytes}): a body of the largest size "
                "allowed could never be received"
            )
        return self

    @model_validator(mode="after")
    def _faults_on_loopback_only(self) -> Settings:
        if self.fault_injection and not is_loopback(self.host):
            raise ValueError(
                f"CONVSERVE_FAULT_INJECTION is for tests and refused on host {self.host!r}: "
                "bind a loopback address"
            )
        return self

    @property
    def cors_origin_list(self) -> list[str]:
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]

    @property
    def model_names(self) -> list[str]:
        return [m.strip() for m in self.models.split(",") if m.strip()]

    @property
    def effective_instances(self) -> int:
        """The sessions each version starts with: the setting, or DEFAULT_INSTANCES (warm-up
        keeps one of them for a tiny model where the setting is 0: runtime.ONE_INSTANCE_BELOW_S)."""
        return self.instances or DEFAULT_INSTANCES

    @property
    def effective_intra_op_threads(self) -> int:
        """Intra-op threads of each instance's session: the setting, or by default the cores
        shared out between the instances, so that batches side by side don't oversubscribe
        them (docs/benchmarks.md, "Defaults")."""
        return self.intra_op_threads or max(1, cpu_count() // self.effective_instances)

    @property
    def solo_threads(self) -> int:
        """Intra-op threads of the session a lone batch runs on (runtime.Runtime): by default
        every core, so that a request alone is not held to its instance's share; 0 (none) when
        the threads are set, or each instance already has every core."""
        if self.intra_op_threads or self.effective_intra_op_threads >= cpu_count():
            return 0
        return cpu_count()

    @property
    def effective_max_connections(self) -> int:
        """The connection cap: the setting, or by default what the file-descriptor limit allows
        once FD_HEADROOM descriptors are kept free (at least half of them)."""
        if self.max_connections:
            return self.max_connections
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return UNLIMITED_FD_CONNECTIONS
        return max(soft - FD_HEADROOM, soft // 2, 1)

    @property
    def effective_decode_threads(self) -> int:
        return self.decode_threads or cpu_count()

    def masked(self) -> dict[str, Any]:
        """Every setting as printed at startup: secrets shown as '***' (or None when unset)."""
        shown: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "***"
            elif isinstance(value, Path):
                value = str(value)
            shown[name] = value
        return shown


def is_loopback(host: str) -> bool:
    """True for 'localhost' and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def settings_env(settings: Settings) -> dict[str, str | None]:
    """Every setting as its CONVSERVE_* variable (None: unset), so that processes started
    from this one (the workers) build the same Settings from their environment."""
    env: dict[str, str | None] = {}
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[env_name(name)] = None if value is None else str(value)
    return env
