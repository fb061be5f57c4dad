"""`python -m service`: serve the model repository (settings: `python -m service --help`).

The command line: every Settings field is a flag, each read from its environment variable too
(a flag wins over the variable); `--help` lists each with its variable and default.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import socket
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import uvicorn
from pydantic import ValidationError

from service import logs
from service.app import create_app
from service.connections import uvicorn_options
from service.processes import run_workers
from service.settings import ENV_PREFIX, Settings, env_name, is_loopback

logger = logging.getLogger("service")
# Read by docker-compose.yml on the host (the published address and port), not by the service.
HOST_SIDE = frozenset({"CONVSERVE_BIND", "CONVSERVE_HOST_PORT"})
HIDDEN_SETTINGS = frozenset({"fault_injection"})  # testing only: not listed by --help


def main(argv: list[str] | None = None) -> None:
    settings = settings_from_args(argv)
    problem = listen_problem(settings.host, settings.port) or workers_problem(settings.workers)
    if problem:  # one line and status 2, as an invalid setting gets
        sys.stderr.write(f"python -m service: {problem}\n")
        raise SystemExit(2)
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


def listen_problem(host: str, port: int) -> str | None:
    """Why `host`:`port` cannot be listened on (an address that does not resolve, a port in use
    or below 1024 without the right), found before any model is loaded; None when it can."""
    where = f"{flag_name('host')} / {env_name('host')}, {flag_name('port')} / {env_name('port')}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (OSError, UnicodeError) as err:
        return f"cannot listen on {host!r} ({where}): {err}"
    try:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except OSError as err:
        hint = " (a port below 1024 needs root or CAP_NET_BIND_SERVICE)" if 0 < port < 1024 else ""
        return f"cannot listen on {host}:{port} ({where}): {err.strerror or err}{hint}"
    return None


def workers_problem(workers: int) -> str | None:
    """Several workers share their metrics through files in a temporary folder: none usable
    (a read-only root without a writable /tmp) is said in one line before anything starts."""
    if workers <= 1:
        return None
    try:
        tempfile.gettempdir()
    except FileNotFoundError as err:
        return f"{env_name('workers')}={workers} needs a writable temporary folder: {err}"
    return None


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


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


class _OneLineParser(argparse.ArgumentParser):
    """A bad flag is one line (as a bad setting is), not the 30-line usage block first."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (--help lists the settings)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="python -m service",
        description="convserve: serve the ONNX models of a model repository over HTTP. Every "
        "flag also reads from its environment variable; a flag wins over the variable.",
    )
    for name, field in Settings.model_fields.items():
        flag = flag_name(name)
        default = field.default
        if isinstance(default, Path):
            default = str(default)
        help_text = f"{field.description} [env {env_name(name)}; default {default!r}]"
        choices = None
        if name in {"providers", "log_format", "log_level"}:
            choices = list(field.annotation.__args__) if field.annotation else None
        if name in HIDDEN_SETTINGS:
            help_text = argparse.SUPPRESS
        parser.add_argument(flag, dest=name, default=None, help=help_text, choices=choices)
    return parser


def settings_from_args(argv: list[str] | None = None) -> Settings:
    """Settings from the environment, overridden by the flags given on the command line; an
    invalid value exits with status 2 and one line naming each problem, no traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as err:
        problems = "; ".join(_describe(problem) for problem in err.errors())
        parser.exit(2, f"{parser.prog}: invalid settings: {problems}\n")
    if not settings.model_repository.is_dir() and not settings.model_poll_seconds:
        # Without polling nothing would ever be loaded: a server that can never be ready.
        where = f"{flag_name('model_repository')} / {env_name('model_repository')}"
        parser.exit(
            2,
            f"{parser.prog}: invalid settings: {where}: {settings.model_repository} is not a "
            f"directory (or set {env_name('model_poll_seconds')} to wait for it)\n",
        )
    return settings


def _describe(problem: Any) -> str:
    """`--flag / CONVSERVE_FLAG: message` for one pydantic problem (the value is not echoed:
    it may be a secret)."""
    name = str(problem["loc"][0]) if problem.get("loc") else ""
    where = f"{flag_name(name)} / {env_name(name)}: " if name else ""
    # A validator's own ValueError comes as "Value error, <its message>".
    return f"{where}{str(problem['msg']).removeprefix('Value error, ')}"


if __name__ == "__main__":
    main()
