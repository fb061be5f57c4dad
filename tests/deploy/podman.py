"""podman for the container tests: images built once per machine, containers and compose
projects removed whatever happens."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, require_system_part

logger = logging.getLogger(__name__)

# What `.ci/run` installs: the engine and OCI runtime (crun fails here on setrlimit and on
# hybrid cgroups, so containers.conf selects runc), --init's catatonit, container networking
# with DNS between compose services, and debootstrap for the base image.
SYSTEM_PACKAGES = "podman runc catatonit netavark aardvark-dns iptables debootstrap"
CATATONIT = Path("/usr/libexec/podman/catatonit")
# Built from Debian packages by deploy/debian-python-image.sh; stands in for python:3.11-slim.
BASE_IMAGE = "localhost/debian-python:3.11-bookworm"
BUILD_TIMEOUT_S = 900
COMMAND_TIMEOUT_S = 120


def require_podman() -> str:
    """The podman executable, or skip (fail in CI) naming the packages to install."""
    missing = [name for name in ("podman", "runc", "debootstrap") if shutil.which(name) is None]
    if not CATATONIT.is_file():
        missing.append("catatonit")
    require_system_part(
        not missing,
        f"podman with runc, catatonit and debootstrap ({', '.join(missing)} not found)",
        f"apt-get install -y {SYSTEM_PACKAGES} (as .ci/run does)",
    )
    require_system_part(
        os.geteuid() == 0,
        "root (debootstrap and rootful podman)",
        "run the container tests as root, as CI does",
    )
    path = shutil.which("podman")
    assert path is not None
    return path


def podman_compose() -> str:
    path = shutil.which("podman-compose", path=str(Path(sys.executable).parent))
    assert path, "podman-compose is missing: it comes with the dev extra; run make setup"
    return path


def run(
    command: Sequence[str],
    *,
    timeout_s: float = COMMAND_TIMEOUT_S,
    check: bool = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        list(command),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
        cwd=REPO_ROOT,
        env=env,
    )
    if check and done.returncode != 0:
        output = (done.stdout + done.stderr)[-4000:]
        pytest.fail(f"{' '.join(command)} exited {done.returncode}:\n{output}", pytrace=False)
    return done


def image_exists(name: str) -> bool:
    return run(["podman", "image", "exists", name], check=False).returncode == 0


def image_size_bytes(name: str) -> int:
    return int(run(["podman", "image", "inspect", "--format", "{{.Size}}", name]).stdout)


def ensure_base_image() -> str:
    """BASE_IMAGE, built (about a minute) only when this machine does not have it yet."""
    if not image_exists(BASE_IMAGE):
        started = time.perf_counter()
        run(
            [str(REPO_ROOT / "deploy/debian-python-image.sh"), BASE_IMAGE],
            timeout_s=BUILD_TIMEOUT_S,
        )
        logger.info("built %s in %.0f s", BASE_IMAGE, time.perf_counter() - started)
    return BASE_IMAGE


def build(tag: str, context: Path, *options: str) -> str:
    """`podman build` with the Docker image format (OCI images drop HEALTHCHECK)."""
    started = time.perf_counter()
    run(
        ["podman", "build", "--format", "docker", *options, "-t", tag, str(context)],
        timeout_s=BUILD_TIMEOUT_S,
    )
    logger.info("built %s in %.0f s", tag, time.perf_counter() - started)
    return tag


def inspect(container: str, template: str) -> str:
    return run(["podman", "inspect", "--format", template, container]).stdout.strip()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@contextmanager
def container(image: str, name: str, *options: str) -> Iterator[str]:
    """`podman run -d`; the container is removed on exit, running or not."""
    run(["podman", "run", "-d", "--name", name, *options, image])
    try:
        yield name
    finally:
        run(["podman", "rm", "--force", "--time", "0", name], check=False)


@dataclass
class ComposeProject:
    name: str
    env: dict[str, str]
    leftovers: list[str] = field(default_factory=list)

    def compose(self, *args: str, timeout_s: float = COMMAND_TIMEOUT_S) -> str:
        """podman-compose on docker-compose.yml; its output (with --verbose, the podman calls)."""
        done = run(
            [podman_compose(), "--verbose", "-p", self.name, "-f", "docker-compose.yml", *args],
            timeout_s=timeout_s,
            env=self.env,
        )
        return done.stdout + done.stderr

    def resources(self) -> list[str]:
        """What podman still holds for the project: containers, pods, networks, volumes."""
        label = f"label=io.podman.compose.project={self.name}"
        found = []
        for kind, listing in (
            ("container", ["ps", "--all", "--filter", label]),
            ("pod", ["pod", "ps", "--filter", f"name=pod_{self.name}"]),
            ("network", ["network", "ls", "--filter", label]),
            ("volume", ["volume", "ls", "--filter", label]),
        ):
            format_ = "{{.Name}}" if kind in {"network", "volume", "pod"} else "{{.Names}}"
            done = run(["podman", *listing, "--format", format_])
            found += [f"{kind} {name}" for name in done.stdout.split()]
        return found


@contextmanager
def compose_project(name: str, env: dict[str, str]) -> Iterator[ComposeProject]:
    """A podman-compose project taken down (`down -v`) on exit; whatever `down` leaves is
    recorded in `leftovers`, then removed by force so that no run leaves anything behind."""
    project = ComposeProject(name=name, env={**os.environ, **env})
    try:
        yield project
    finally:
        run(
            [podman_compose(), "-p", name, "-f", "docker-compose.yml", "down", "-v"],
            timeout_s=COMMAND_TIMEOUT_S,
            env=project.env,
            check=False,
        )
        project.leftovers = project.resources()
        for leftover in project.leftovers:
            kind, resource = leftover.split(" ", 1)
            remove = {"container": ["rm", "--force"], "pod": ["pod", "rm", "--force"]}
            command = remove.get(kind, [kind, "rm", "--force"])
            run(["podman", *command, resource], check=False)


def healthcheck_command(image: str) -> list[str]:
    """The image's HEALTHCHECK as an exec argv (Docker image format keeps it; OCI drops it)."""
    done = run(["podman", "image", "inspect", "--format", "{{json .Config.Healthcheck}}", image])
    healthcheck = json.loads(done.stdout)
    assert healthcheck, f"{image} has no HEALTHCHECK: was it built with --format docker?"
    test: list[str] = healthcheck["Test"]
    assert test[0] == "CMD", test
    return test[1:]
