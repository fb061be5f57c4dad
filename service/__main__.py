"""`python -m service`: serve the model repository (settings: `python -m service --help`)."""

from __future__ import annotations

import difflib
import json
import logging
import os
from collections.abc import Mapping
from typing import Any

import uvicorn

from service import logs
from service.app import create_app
from service.connections import uvicorn_options
from service.processes import run_workers
from service.settings import ENV_PREFIX, Settings, env_name, is_loopback, settings_from_args

logger = logging.getLogger("service")
# Read by docker-compose.yml on the host (the published address and port), not by the service.
HOST_SIDE = frozenset({"CONVSERVE_BIND", "CONVSERVE_HOST_PORT"})


def main(argv: list[str] | None = None) -> None:
    settings = settings_from_args(argv)
    logs.configure(settings.log_format, settings.log_level)
    logger.info("settings: %s", json.dumps(settings.masked(), sort_keys=True))
    warn_if_exposed(settings)
    warn_unknown_settings(os.environ)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "access_log": False,
        "proxy_headers": False,  # nothing here reads the client address; parsing it cost 6 %
        "timeout_graceful_shutdown": settings.shutdown_timeout_s or None,
        **uvicorn_options(settings),  # request-head deadline, connection cap
    }
    logger.info(
        "connections: at most %d open per process; request heads within %s",
        settings.effective_max_connections,
        f"{settings.header_timeout_s:g} s" if settings.header_timeout_s else "any time",
    )
    if settings.workers > 1:
        run_workers(settings, options)
    else:
        uvicorn.run(create_app(settings), **options)


def warn_unknown_settings(environ: Mapping[str, str]) -> list[str]:
    """Warn about each CONVSERVE_* variable that is no setting (a typo is otherwise silently
    ignored and its default used), naming the closest setting; returns the names."""
    known = {env_name(name) for name in Settings.model_fields}
    unknown = sorted(k for k in environ if k.startswith(ENV_PREFIX) and k not in known | HOST_SIDE)
    for name in unknown:
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        logger.warning("%s is not a setting and is ignored%s", name, hint)
    return unknown


def warn_if_exposed(settings: Settings) -> None:
    """A loud warning when a non-loopback address serves inference without an API key."""
    if settings.api_key is None and not is_loopback(settings.host):
        logger.warning(
            "SECURITY: listening on %s with no CONVSERVE_API_KEY: anyone who can reach this "
            "address can run inference. Set CONVSERVE_API_KEY (docs/security.md) or bind "
            "127.0.0.1.",
            settings.host,
        )
    if settings.fault_injection:
        logger.warning("TESTING ONLY: fault injection %r is on", settings.fault_injection)


if __name__ == "__main__":
    main()
