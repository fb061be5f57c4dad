"""FastAPI dependencies: objects built in the lifespan (app.state) and the API-key check.

Every dependency is `async def` although none awaits: FastAPI runs a plain `def` dependency in
its thread pool, a thread hop per dependency per request that cost the tiny-model path more
than the model itself (docs/benchmarks.md).
"""

from __future__ import annotations

import hmac
import time
from typing import Annotated

from fastapi import Depends, Request
from pydantic import SecretStr

from service.classify import Classifier
from service.errors import Forbidden, Unauthorized
from service.manager import ModelManager
from service.metrics import Metrics
from service.settings import Settings


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_manager(request: Request) -> ModelManager:
    manager: ModelManager = request.app.state.manager
    return manager


async def get_classifier(request: Request) -> Classifier:
    classifier: Classifier = request.app.state.classifier
    return classifier


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
ManagerDep = Annotated[ModelManager, Depends(get_manager)]
ClassifierDep = Annotated[Classifier, Depends(get_classifier)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


def _check_key(request: Request, secret: SecretStr, what: str) -> None:
    """'Authorization: Bearer <key>' or 'X-API-Key: <key>', compared in constant time."""
    given = request.headers.get("x-api-key")
    auth = request.headers.get("authorization", "")
    if given is None and auth.lower().startswith("bearer "):
        given = auth[len("bearer ") :].strip()
    if not given:
        raise Unauthorized(f"the {what} is required (Authorization: Bearer or X-API-Key)")
    if not hmac.compare_digest(given.encode(), secret.get_secret_value().encode()):
        raise Forbidden(f"invalid {what}")


def check_api_key(request: Request, settings: Settings) -> None:
    """Inference routes: with CONVSERVE_API_KEY set, that key is required; unset: open."""
    if settings.api_key is not None:
        _check_key(request, settings.api_key, "API key")


async def require_api_key(request: Request, settings: SettingsDep) -> None:
    """`check_api_key` as a router dependency."""
    check_api_key(request, settings)


async def require_admin_key(request: Request, settings: SettingsDep) -> None:
    """Repository routes: CONVSERVE_ADMIN_KEY is required; unset, they are disabled (403)."""
    if settings.admin_key is None:
        raise Forbidden(
            "the model repository extension is disabled: set CONVSERVE_ADMIN_KEY to enable it"
        )
    _check_key(request, settings.admin_key, "admin key")


def request_deadline(settings: Settings, timeout_ms: float | None) -> float | None:
    """`time.monotonic()` deadline from X-Request-Timeout-Ms (positive: `params.timeout_ms`),
    else CONVSERVE_REQUEST_TIMEOUT_MS."""
    chosen = timeout_ms or settings.request_timeout_ms
    return time.monotonic() + chosen / 1000.0 if chosen else None
