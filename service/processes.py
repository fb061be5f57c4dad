"""Several server processes on one port (`CONVSERVE_WORKERS` > 1).

One Python event loop caps how many small-model requests a second one process answers
(docs/benchmarks.md); more need more processes. uvicorn's supervisor binds the port once and starts
the workers, restarting any that dies. Each worker builds the same Settings from the environment
(`settings_env`) and loads its own models, batchers and ORT sessions: memory grows with the workers
and batches form per worker. Metrics are shared through prometheus_client's multiprocess files, so
any worker's /metrics answers for all of them. Repository load/unload would reach one worker only,
so they are refused (409); MODEL_POLL_SECONDS reloads every worker from the folder instead.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import uvicorn
from fastapi import FastAPI

from service import logs
from service.app import create_app
from service.metrics import MULTIPROCESS_ENV
from service.settings import Settings, settings_env


def run_workers(settings: Settings, server_options: dict[str, Any]) -> None:
    """Serve with `settings.workers` processes until SIGTERM / Ctrl-C (then each drains)."""
    with tempfile.TemporaryDirectory(prefix="convserve-metrics-") as metrics_dir:
        for name, value in {**settings_env(settings), MULTIPROCESS_ENV: metrics_dir}.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        uvicorn.run(
            "service.processes:worker_app",
            factory=True,
            workers=settings.workers,
            **server_options,
        )


def worker_app() -> FastAPI:
    """The app of one worker process (started by uvicorn, configured by run_workers)."""
    settings = Settings()
    logs.configure(settings.log_format, settings.log_level, with_pid=True)
    return create_app(settings)
