"""Closed-loop HTTP load for convserve: N clients, each sending its next request when answered.

    python bench/load.py --concurrency 1,16 --duration 10            # against a running service
    python bench/load.py --serve --concurrency 1,16 --duration 10    # starts `python -m service`

Prints per concurrency level: requests, errors, req/s, latency p50/p90/p99, and the mean batch
size the service observed (from /metrics: convserve_batch_size sum/count over the run), with
throughput relative to the first level (the baseline of the same run).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
LISTENING = re.compile(r"Uvicorn running on http://[\d.]+:(\d+)")


@dataclass
class Result:
    concurrency: int
    latencies_s: list[float]
    errors: int
    elapsed_s: float
    mean_batch: float

    def line(self, baseline_rps: float) -> str:
        rps = len(self.latencies_s) / self.elapsed_s
        p50, p90, p99 = (np.percentile(self.latencies_s, q) * 1000 for q in (50, 90, 99))
        ratio = rps / baseline_rps
        return (
            f"{self.concurrency:>4} {len(self.latencies_s):>8} {self.errors:>6} {rps:>9.1f} "
            f"{ratio:>6.2f}x {p50:>8.2f} {p90:>8.2f} {p99:>8.2f} {self.mean_batch:>6.2f}"
        )


def sample_image() -> bytes:
    """A Fashion-MNIST test image as PNG when the dataset is installed, else random pixels."""
    try:
        from training.data.idx import load_fashion_mnist

        pixels = load_fashion_mnist(train=False)[0][0]
    except (ImportError, FileNotFoundError):
        pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


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

    def __init__(self, host: str, port: int, path: str, image: bytes) -> None:
        self.host, self.port = host, port
        self.request = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: image/png\r\n"
            f"Content-Length: {len(image)}\r\n\r\n"
        ).encode() + image
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self) -> int:
        """Send the request, read the whole answer; the status code."""
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(self.request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        length = int({k.lower(): v for k, v in headers.items()}.get("content-length", "0"))
        await self.reader.readexactly(length)
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()
        self.reader = self.writer = None


async def run_level(
    base_url: str, model: str, image: bytes, concurrency: int, duration_s: float
) -> Result:
    url = httpx.URL(base_url)
    path = f"/v1/models/{model}/classify"
    latencies: list[float] = []
    errors = 0
    before = batch_stats(base_url, model)
    stop_at = time.perf_counter() + duration_s

    async def worker() -> None:
        nonlocal errors
        connection = Connection(url.host, url.port or 80, path, image)
        try:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                try:
                    ok = await connection.post() == 200
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    await connection.close()
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1
        finally:
            await connection.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    after = batch_stats(base_url, model)
    runs = after[1] - before[1]
    mean_batch = (after[0] - before[0]) / runs if runs else float("nan")
    return Result(concurrency, latencies, errors, elapsed, mean_batch)


def start_service(extra_env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str, Path]:
    log = Path(tempfile.mkstemp(prefix="convserve-bench-", suffix=".log")[1])
    env = {**os.environ, "CONVSERVE_PORT": "0", **extra_env}
    process = subprocess.Popen(
        [sys.executable, "-m", "service"],
        cwd=REPO_ROOT,
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        match = LISTENING.search(log.read_text(errors="replace"))
        if match:
            base_url = f"http://127.0.0.1:{match.group(1)}"
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{base_url}/health/ready").status_code == 200:
                        return process, base_url, log
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        time.sleep(0.1)
    process.terminate()
    raise SystemExit(f"service did not become ready; see {log}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="Service base URL.")
    parser.add_argument("--model", default="lenet5-fashion")
    parser.add_argument("--concurrency", default="1,16", help="Comma-separated client counts.")
    parser.add_argument("--duration", type=float, default=10.0, help="Seconds per level.")
    parser.add_argument("--warmup", type=float, default=1.0, help="Seconds of untimed load first.")
    parser.add_argument("--image", type=Path, help="Image file to send (default: Fashion-MNIST).")
    parser.add_argument(
        "--serve",
        action="store_true",
        help="Start `python -m service` on a free port (CONVSERVE_* from the environment).",
    )
    args = parser.parse_args()
    image = args.image.read_bytes() if args.image else sample_image()
    levels = [int(c) for c in args.concurrency.split(",")]
    process = None
    base_url = args.url
    if args.serve:
        process, base_url, log = start_service({})
        print(f"service at {base_url} (log {log})")
    try:
        asyncio.run(run_level(base_url, args.model, image, max(levels), args.warmup))
        print(" clients requests errors     req/s  ratio  p50 ms   p90 ms   p99 ms  batch")
        results = []
        for level in levels:
            results.append(
                asyncio.run(run_level(base_url, args.model, image, level, args.duration))
            )
            baseline = len(results[0].latencies_s) / results[0].elapsed_s
            print(results[-1].line(baseline), flush=True)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=60)


if __name__ == "__main__":
    main()
