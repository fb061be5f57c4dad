"""Run the real service for tests: uvicorn in a thread, or `python -m service` in a subprocess.

Both listen on a free 127.0.0.1 port chosen by the OS (port 0) and wait for /health/ready.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn

from service.app import create_app
from service.connections import uvicorn_options
from service.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 60.0
_LISTENING = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")


def wait_ready(base_url: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{base_url}/health/ready", timeout=5)
            if response.status_code == 200:
                return
            last = response.text
        except httpx.TransportError as err:
            last = repr(err)
        time.sleep(0.05)
    raise TimeoutError(f"{base_url} not ready after {timeout_s}s: {last}")


@contextmanager
def threaded_server(settings: Settings, *, ready: bool = True) -> Iterator[str]:
    """Real uvicorn serving `create_app(settings)` in a thread, its connections guarded as
    `python -m service` guards them; yields the base URL."""
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=0,
        log_config=None,
        access_log=False,
        lifespan="on",
        **uvicorn_options(settings),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    base_url = f"http://127.0.0.1:{port}"
    try:
        if ready:
            wait_ready(base_url)
        yield base_url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


class ServiceProcess:
    """`python -m service` in a subprocess with the given CONVSERVE_* settings (and, with
    `nofile`, that many file descriptors at most, as `ulimit -n` sets)."""

    def __init__(self, log_path: Path, *, nofile: int | None = None, **settings: object) -> None:
        env = dict(os.environ)
        env.update({f"CONVSERVE_{k.upper()}": str(v) for k, v in settings.items()})
        env.setdefault("CONVSERVE_PORT", "0")
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=REPO_ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=None if nofile is None else lambda: _limit_files(nofile),
        )
        try:
            self.base_url = f"http://127.0.0.1:{self._port()}"
            wait_ready(self.base_url)
        except (RuntimeError, TimeoutError):
            self.stop()
            raise

    def _port(self) -> int:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            match = _LISTENING.search(self.log())
            if match:
                return int(match.group(1))
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited early:\n{self.log()}")
            time.sleep(0.05)
        raise TimeoutError(f"service did not listen:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = 30) -> int:
        if self.process.poll() is None:
            self.terminate()
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._log.close()
        return code

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _limit_files(count: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels` (Prometheus text format)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total
