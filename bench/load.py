"""HTTP load for the benchmark: closed-loop (N clients, each sending its next request when
answered) and open-loop (requests at a fixed rate, whatever the answers do).

    python bench/load.py --concurrency 1,16 --duration 10            # against a running service
    python bench/load.py --serve --concurrency 1,16 --duration 10    # starts `python -m service`
    python bench/load.py --serve --rate 300 --duration 5             # open loop, 300 req/s

Prints per concurrency level: requests, errors, req/s, latency p50/p90/p99, and the mean batch
size the service observed (from /metrics: convserve_batch_size sum/count over the run), with
throughput relative to the first level (the baseline of the same run). `bench/compare.py` drives
the same client against every system.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]


def service_python() -> Path:
    """The service's own environment: BENCH_SERVICE_PYTHON, else `.venv` of this checkout or, in
    a git worktree without one, of the main checkout. Every server and ceiling runs it with this
    checkout as its working directory and PYTHONPATH, so it runs this checkout's code."""
    if os.environ.get("BENCH_SERVICE_PYTHON"):
        return Path(os.environ["BENCH_SERVICE_PYTHON"])
    local = REPO_ROOT / ".venv" / "bin" / "python"
    if local.exists():
        return local
    common = subprocess.run(
        ["git", "rev-parse", "--path-format=absolute", "--git-common-dir"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    main = Path(common).parent / ".venv" / "bin" / "python" if common else local
    return main if main.exists() else Path(sys.executable)


SERVICE_PYTHON = service_python()
CHILD_ENV = {"PYTHONPATH": str(REPO_ROOT)}  # this checkout's code before any installed copy
LISTENING = re.compile(r"Uvicorn running on http://[\d.]+:(\d+)")
OVERLOADED = 503


@dataclass(frozen=True)
class Target:
    """One prepared request: sent as-is, byte for byte, on every keep-alive connection."""

    host: str
    port: int
    path: str
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, base_url: str, path: str, body: bytes, headers: Mapping[str, str]) -> Target:
        url = httpx.URL(base_url)
        return cls(url.host, url.port or 80, path, body, headers)

    def request(self) -> bytes:
        lines = [f"POST {self.path} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


@dataclass
class Result:
    """One load level: latencies of the 200s, everything else counted."""

    label: str
    latencies_s: list[float]
    errors: int
    elapsed_s: float
    mean_batch: float = float("nan")
    client_cpu_s: float = 0.0
    overloaded: int = 0  # 503 answers (open loop: the fast refusals)
    overloaded_latencies_s: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)  # every answer by status (0: failed)

    @property
    def rps(self) -> float:
        return len(self.latencies_s) / self.elapsed_s

    def percentiles_ms(self, latencies: list[float] | None = None) -> tuple[float, float, float]:
        values = self.latencies_s if latencies is None else latencies
        if not values:
            return (math.nan, math.nan, math.nan)
        p50, p90, p99 = (float(np.percentile(values, q)) * 1000 for q in (50, 90, 99))
        return p50, p90, p99

    def summary(self) -> dict[str, Any]:
        p50, p90, p99 = self.percentiles_ms()
        return {
            "label": self.label,
            "requests": len(self.latencies_s),
            "errors": self.errors,
            "overloaded_503": self.overloaded,
            "overloaded_p99_ms": self.percentiles_ms(self.overloaded_latencies_s)[2],
            "rps": self.rps,
            "p50_ms": p50,
            "p90_ms": p90,
            "p99_ms": p99,
            "mean_batch": self.mean_batch,
            "client_cpu_share": self.client_cpu_s / self.elapsed_s / (os.cpu_count() or 1),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
        }

    def line(self, baseline_rps: float) -> str:
        p50, p90, p99 = self.percentiles_ms()
        return (
            f"{self.label:>6} {len(self.latencies_s):>8} {self.errors:>6} {self.rps:>9.1f} "
            f"{self.rps / baseline_rps:>6.2f}x {p50:>8.2f} {p90:>8.2f} {p99:>8.2f} "
            f"{self.mean_batch:>6.2f}"
        )


HEADER = " level requests errors     req/s  ratio  p50 ms   p90 ms   p99 ms  batch"


def batch_stats(base_url: str, model: str) -> tuple[float, float]:
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    values = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        for kind in values:
            if line.startswith(f"convserve_batch_size_{kind}{{") and f'model="{model}"' in line:
                values[kind] += float(line.rsplit(" ", 1)[1])
    return values["sum"], values["count"]


class Connection:
    """One keep-alive HTTP/1.1 connection on raw asyncio streams: a much lighter client than
    httpx, so that the load generator takes less of the CPU it shares with the service."""

    def __init__(self, target: Target, request: bytes) -> None:
        self.target = target
        self.request = request
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self) -> int:
        """Send the request, read the whole answer; the status code."""
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(
                self.target.host, self.target.port
            )
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
        if headers.get("transfer-encoding") == "chunked":
            while size := int((await self.reader.readuntil(b"\r\n")).strip(), 16):
                await self.reader.readexactly(size + 2)
            await self.reader.readuntil(b"\r\n")
        else:
            await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection") == "close":
            await self.close()
        return status

    async def timed_post(self) -> tuple[int, float]:
        """(status, seconds); status 0 when the connection failed (it is then reopened)."""
        started = time.perf_counter()
        try:
            status = await self.post()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            await self.close()
            status = 0
        return status, time.perf_counter() - started

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


class Collector:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.overloaded: list[float] = []
        self.errors = 0
        self.statuses: dict[int, int] = {}

    def add(self, status: int, seconds: float) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status == 200:
            self.latencies.append(seconds)
        elif status == OVERLOADED:
            self.overloaded.append(seconds)
        else:
            self.errors += 1


async def _measure(
    target: Target, label: str, load: Any, batch_url: str | None, batch_model: str
) -> Result:
    """Run `load(collector, request)` and wrap what it collected (and the batch stats)."""
    request = target.request()
    collector = Collector()
    before = batch_stats(batch_url, batch_model) if batch_url else (0.0, 0.0)
    cpu_before = time.process_time()
    started = time.perf_counter()
    await load(collector, request)
    elapsed = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_before
    mean_batch = float("nan")
    if batch_url:
        after = batch_stats(batch_url, batch_model)
        runs = after[1] - before[1]
        mean_batch = (after[0] - before[0]) / runs if runs else float("nan")
    return Result(
        label,
        collector.latencies,
        collector.errors,
        elapsed,
        mean_batch,
        cpu_s,
        len(collector.overloaded),
        collector.overloaded,
        collector.statuses,
    )


async def single_request(target: Target) -> tuple[int, float]:
    """One request on a fresh connection: (status, seconds), e.g. the first after startup."""
    connection = Connection(target, target.request())
    try:
        return await connection.timed_post()
    finally:
        await connection.close()


async def closed_loop(
    target: Target,
    concurrency: int,
    duration_s: float,
    *,
    batch_url: str | None = None,
    batch_model: str = "",
) -> Result:
    """`concurrency` clients on their own connections, each sending again when answered."""

    async def load(collector: Collector, request: bytes) -> None:
        stop_at = time.perf_counter() + duration_s

        async def client() -> None:
            connection = Connection(target, request)
            try:
                while time.perf_counter() < stop_at:
                    collector.add(*await connection.timed_post())
            finally:
                await connection.close()

        await asyncio.gather(*(client() for _ in range(concurrency)))

    result = await _measure(target, str(concurrency), load, batch_url, batch_model)
    result.errors += result.overloaded  # closed loop: a 503 is an error like any other
    return result


async def open_loop(
    target: Target,
    rate_per_s: float,
    duration_s: float,
    *,
    batch_url: str | None = None,
    batch_model: str = "",
) -> Result:
    """Requests sent at `rate_per_s`, each on an idle pooled connection (a new one if none is
    idle), whatever happens to the earlier ones; 503s are counted apart, as fast refusals."""

    async def load(collector: Collector, request: bytes) -> None:
        idle: list[Connection] = []
        pending: set[asyncio.Task[None]] = set()

        async def one() -> None:
            connection = idle.pop() if idle else Connection(target, request)
            collector.add(*await connection.timed_post())
            idle.append(connection)

        started = time.perf_counter()
        count = int(rate_per_s * duration_s)
        for index in range(count):
            delay = started + index / rate_per_s - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one())
            pending.add(task)
            task.add_done_callback(pending.discard)
        await asyncio.gather(*pending)
        await asyncio.gather(*(c.close() for c in idle))

    return await _measure(target, f"{rate_per_s:.0f}/s", load, batch_url, batch_model)


def start_service(extra_env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str, Path]:
    """`python -m service` on a free port, in its own process group; (process, URL, log)."""
    log = Path(tempfile.mkstemp(prefix="convserve-bench-", suffix=".log")[1])
    env = {**os.environ, **CHILD_ENV, "CONVSERVE_PORT": "0", **extra_env}
    process = subprocess.Popen(
        [str(SERVICE_PYTHON), "-m", "service"],
        cwd=REPO_ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        match = LISTENING.search(log.read_text(errors="replace"))
        if match:
            base_url = f"http://127.0.0.1:{match.group(1)}"
            if wait_ready(f"{base_url}/health/ready", deadline):
                return process, base_url, log
        time.sleep(0.1)
    process.terminate()
    raise SystemExit(f"service did not become ready; see {log}")


def wait_ready(url: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="Service base URL.")
    parser.add_argument("--model", default="lenet5-fashion")
    parser.add_argument("--concurrency", default="1,16", help="Comma-separated client counts.")
    parser.add_argument("--rate", type=float, help="Open loop at this many requests/s instead.")
    parser.add_argument("--duration", type=float, default=10.0, help="Seconds per level.")
    parser.add_argument("--warmup", type=float, default=1.0, help="Seconds of untimed load first.")
    parser.add_argument("--image", type=Path, help="Image file to send (default: Fashion-MNIST).")
    parser.add_argument(
        "--serve",
        action="store_true",
        help="Start `python -m service` on a free port (CONVSERVE_* from the environment).",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(REPO_ROOT))
    from bench.models import fashion_png

    image = args.image.read_bytes() if args.image else fashion_png()
    content_type = "image/jpeg" if image[:2] == b"\xff\xd8" else "image/png"
    levels = [int(c) for c in args.concurrency.split(",")]
    process = None
    base_url = args.url
    if args.serve:
        process, base_url, log = start_service({})
        print(f"service at {base_url} (log {log})")
    target = Target.of(
        base_url, f"/v1/models/{args.model}/classify", image, {"Content-Type": content_type}
    )
    stats = {"batch_url": base_url, "batch_model": args.model}
    try:
        asyncio.run(closed_loop(target, max(levels), args.warmup))
        print(HEADER)
        if args.rate:
            result = asyncio.run(open_loop(target, args.rate, args.duration, **stats))
            print(result.line(result.rps), f" 503s: {result.overloaded}")
            return
        results: list[Result] = []
        for level in levels:
            results.append(asyncio.run(closed_loop(target, level, args.duration, **stats)))
            print(results[-1].line(results[0].rps), flush=True)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=60)


if __name__ == "__main__":
    main()
