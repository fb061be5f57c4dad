"""The `model` label of a request's metrics, from one place (edge, native and v2 errors)."""

from __future__ import annotations

from typing import Any

from starlette.types import Scope


def model_label(scope: Scope, named: str = "") -> str:
    """The model the request named (`named`, else the route's, else its path's), when the server
    knows it; "" otherwise, so that requests for made-up models cannot grow /metrics."""
    state: dict[str, Any] = scope.get("state") or {}
    path_params: dict[str, Any] = scope.get("path_params") or {}
    name = str(named or state.get("model") or path_params.get("model") or "")
    manager = getattr(scope["app"].state, "manager", None)
    return name if name and manager is not None and manager.knows(name) else ""
