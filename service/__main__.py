"""`python -m service`: serve the model repository (settings: `python -m service --help`)."""

from __future__ import annotations

import json
import logging

import uvicorn

from service import logs
from service.app import create_app
from service.settings import settings_from_args

logger = logging.getLogger("service")


def main(argv: list[str] | None = None) -> None:
    settings = settings_from_args(argv)
    logs.configure(settings.log_format, settings.log_level)
    logger.info("settings: %s", json.dumps(settings.masked(), sort_keys=True))
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=None,
    )


if __name__ == "__main__":
    main()
