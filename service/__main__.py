"""`python -m service`: serve the model repository (settings: `python -m service --help`)."""

from __future__ import annotations

import json
import logging
from typing import Any

import uvicorn

from service import logs
from service.app import create_app
from service.processes import run_workers
from service.settings import Settings, is_loopback, settings_from_args

logger = logging.getLogger("service")


def main(argv: list[str] | None = None) -> None:
    settings = settings_from_args(argv)
    logs.configure(settings.log_format, settings.log_level)
    logger.info("settings: %s", json.dumps(settings.masked(), sort_keys=True))
    warn_if_exposed(settings)
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "access_log": False,
        "proxy_headers": False,  # nothing here reads the client address; parsing it cost 6 %
        "timeout_graceful_shutdown": settings.shutdown_timeout_s or None,
    }
    if settings.workers > 1:
        run_workers(settings, options)
    else:
        uvicorn.run(create_app(settings), **options)


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
