"""Measure the v2 infer route at concurrency 1..8: perf_analyzer when given, else a stand-in.

    python bench/v2_perf.py --serve --concurrency-range 1:8 --duration 3 -f v2_perf.csv
    python bench/v2_perf.py --serve --perf-analyzer /path/to/perf_analyzer -f v2_perf.csv
    python bench/v2_perf.py -u 127.0.0.1:8000 -m lenet5-fashion -b 1

With `--perf-analyzer` the real Triton perf_analyzer runs (`-f` CSV) and its report is parsed
by `read_report`. The current PyPI `perf-analyzer` (2.60) is built for glibc 2.38 and does not
start on Debian 12 (glibc 2.36); the binary bundled in the `tritonclient` 2.41.0 wheel does,
with `libb64-0d` (apt) and `libcudart.so.12` (from the `nvidia-cuda-runtime-cu12` wheel) on
LD_LIBRARY_PATH: docs/v2.md gives the commands.

Without it, the stand-in: closed loop, N client threads (each its own tritonclient
connection) sending the next request when the previous one is answered, the FP32 input as
binary tensor data, logits back as binary. It prints perf_analyzer's summary lines and writes a
CSV with perf_analyzer's column names (latencies in microseconds), so `read_report` reads both.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import tritonclient.http as triton
from load import batch_stats, start_service
from tritonclient.utils import InferenceServerException

COLUMNS = [
    "Concurrency",
    "Inferences/Second",
    "p50 latency",
    "p90 latency",
    "p95 latency",
    "p99 latency",
    "Avg latency",
    "Errors",
    "Mean batch",
]


@dataclass
class Level:
    concurrency: int
    latencies_s: list[float]
    errors: int
    elapsed_s: float
    batch_size: int
    mean_batch: float

    @property
    def inferences_per_s(self) -> float:
        return len(self.latencies_s) * self.batch_size / self.elapsed_s

    def row(self) -> dict[str, str]:
        p50, p90, p95, p99 = (
            float(np.percentile(self.latencies_s, q)) * 1e6 for q in (50, 90, 95, 99)
        )
        return {
            "Concurrency": str(self.concurrency),
            "Inferences/Second": f"{self.inferences_per_s:.1f}",
            "p50 latency": str(round(p50)),
            "p90 latency": str(round(p90)),
            "p95 latency": str(round(p95)),
            "p99 latency": str(round(p99)),
            "Avg latency": str(round(float(np.mean(self.latencies_s)) * 1e6)),
            "Errors": str(self.errors),
            "Mean batch": f"{self.mean_batch:.2f}",
        }


def sample_inputs(batch_size: int) -> npt.NDArray[np.float32]:
    """Fashion-MNIST test images, preprocessed as the default model expects, else noise."""
    try:
        from training.data.idx import load_fashion_mnist

        pixels = load_fashion_mnist(train=False)[0][:batch_size]
    except (ImportError, FileNotFoundError):
        pixels = np.random.default_rng(0).integers(0, 256, (batch_size, 28, 28), dtype=np.uint8)
    mean, std = np.float32(0.286), np.float32(0.353)  # models/lenet5-fashion/1/metadata.json
    return ((pixels.astype(np.float32) / np.float32(255) - mean) / std)[:, None]


def run_level(
    url: str, model: str, x: npt.NDArray[np.float32], concurrency: int, duration_s: float
) -> Level:
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start_at = time.monotonic() + 0.2  # every client connected before the clock starts
    stop_at = start_at + duration_s

    def client_loop() -> None:
        client = triton.InferenceServerClient(url, network_timeout=60)
        tensor = triton.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        wanted = [triton.InferRequestedOutput("logits", binary_data=True)]
        own: list[float] = []
        failed = 0
        while time.monotonic() < start_at:
            time.sleep(0.001)
        while (now := time.monotonic()) < stop_at:
            try:
                client.infer(model, [tensor], outputs=wanted)
                own.append(time.monotonic() - now)
            except InferenceServerException:
                failed += 1
        client.close()
        with lock:
            latencies.extend(own)
            errors[0] += failed

    before = batch_stats(f"http://{url}", model)
    threads = [threading.Thread(target=client_loop) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = batch_stats(f"http://{url}", model)
    runs = after[1] - before[1]
    mean_batch = (after[0] - before[0]) / runs if runs else float("nan")
    return Level(concurrency, latencies, errors[0], duration_s, len(x), mean_batch)


def read_report(path: Path) -> list[dict[str, float]]:
    """Rows of a perf_analyzer `-f` CSV (or this script's): concurrency, infer/s, p99 usec..."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [
        {
            "concurrency": float(row["Concurrency"]),
            "inferences_per_s": float(row["Inferences/Second"]),
            "p50_us": float(row["p50 latency"]),
            "p99_us": float(row["p99 latency"]),
        }
        for row in rows
    ]


def run_perf_analyzer(
    binary: str, url: str, model: str, batch_size: int, levels: str, duration_s: float, out: Path
) -> list[dict[str, float]]:
    """perf_analyzer over HTTP at each concurrency; its `-f` CSV parsed, by concurrency."""
    command = [
        binary,
        "-m",
        model,
        "-u",
        url,
        "-b",
        str(batch_size),
        "--concurrency-range",
        levels,
        "--measurement-interval",
        str(round(duration_s * 1000)),
        "--stability-percentage",
        "30",  # a shared 2-core host: perf_analyzer's default 10 % rarely settles
        "--max-trials",
        "10",
        "-f",
        str(out),
    ]
    print(" ".join(command), flush=True)
    subprocess.run(command, check=True)
    return sorted(read_report(out), key=lambda row: row["concurrency"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-u", "--url", default="127.0.0.1:8000", help="host:port of the service")
    parser.add_argument("-m", "--model", default="lenet5-fashion")
    parser.add_argument("-b", "--batch-size", type=int, default=1)
    parser.add_argument("--concurrency-range", default="1:8", help="start:end[:step]")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per level")
    parser.add_argument("-f", "--file", type=Path, help="write the CSV report here")
    parser.add_argument("--serve", action="store_true", help="start `python -m service` first")
    parser.add_argument("--perf-analyzer", help="path of a perf_analyzer binary to run instead")
    args = parser.parse_args()
    start, end, *step = (int(p) for p in args.concurrency_range.split(":"))
    levels = list(range(start, end + 1, step[0] if step else 1))
    x = sample_inputs(args.batch_size)
    process = None
    url = args.url
    if args.serve:
        process, base_url, log = start_service({})
        url = base_url.removeprefix("http://")
        print(f"service at {base_url} (log {log})")
    try:
        if args.perf_analyzer:
            out = args.file or Path("v2_perf.csv")
            rows = run_perf_analyzer(
                args.perf_analyzer,
                url,
                args.model,
                args.batch_size,
                args.concurrency_range,
                args.duration,
                out,
            )
            print("concurrency  infer/s  p50 ms  p99 ms")
            for row in rows:
                print(
                    f"{row['concurrency']:>11.0f} {row['inferences_per_s']:>8.1f} "
                    f"{row['p50_us'] / 1000:>7.2f} {row['p99_us'] / 1000:>7.2f}"
                )
            return
        run_level(url, args.model, x, max(levels), 0.5)  # warm-up, untimed
        results = []
        for concurrency in levels:
            level = run_level(url, args.model, x, concurrency, args.duration)
            results.append(level)
            row = level.row()
            print(
                f"Concurrency: {concurrency}, throughput: {row['Inferences/Second']} infer/sec, "
                f"latency {row['Avg latency']} usec (p50 {row['p50 latency']}, "
                f"p99 {row['p99 latency']} usec), errors {level.errors}, "
                f"mean batch {row['Mean batch']}",
                flush=True,
            )
        if args.file:
            with args.file.open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=COLUMNS)
                writer.writeheader()
                writer.writerows(level.row() for level in results)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=60)


if __name__ == "__main__":
    main()
