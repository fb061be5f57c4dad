"""The ceiling: ONNX Runtime `session.run` in-process on preprocessed tensors, no HTTP.

    python bench/ceiling.py --model resnet18            # prints JSON
    python bench/ceiling.py --model resnet18 --batches 8 --layout 1x2   # one layout only

Tries each batch size with each thread layout (one session with T intra-op threads, or S
sessions x 1 thread run side by side) and reports images/s for each and the best. Also times
batch-1 compute and the decode + preprocessing of the benchmark image (`--phone`: the 4000x3000
photo) as convserve does it by default (JPEG draft decoding included), in one thread: the c=1
latency target and the decode-bound limit of `bench/report.py`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.models import BENCH_REPOSITORY, image_for  # noqa: E402
from bench.servers.common import MAX_PIXELS, Model, providers, version_dir  # noqa: E402
from service.preprocess import preprocess  # noqa: E402

MIN_SECONDS = 1.5
MIN_RUNS = 3


def session(
    path: Path, threads: int, spinning: bool = False, stop_after_run: bool = False
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if stop_after_run:  # spinning only within a run, as convserve's sessions that run alone
        options.add_session_config_entry("session.force_spinning_stop", "1")
    return ort.InferenceSession(str(path), options, providers=providers())


def images_per_s(sessions: list[ort.InferenceSession], batch: np.ndarray, name: str) -> float:
    """Every session runs `batch` over and over in its own thread; total images per second."""

    def loop(s: ort.InferenceSession) -> int:
        s.run(None, {name: batch})  # warm-up
        runs, started = 0, time.perf_counter()
        while runs < MIN_RUNS or time.perf_counter() - started < MIN_SECONDS:
            s.run(None, {name: batch})
            runs += 1
        return runs

    with ThreadPoolExecutor(len(sessions)) as pool:
        started = time.perf_counter()
        runs = sum(pool.map(loop, sessions))
        elapsed = time.perf_counter() - started
    return runs * batch.shape[0] / elapsed


def median_ms(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return float(np.median(times)) * 1000


Layout = tuple[int, int, bool]  # (sessions, intra-op threads each, spinning)


def all_layouts(cores: int) -> list[Layout]:
    # ORT's default spins idle threads; convserve doesn't (docs/service.md), so the ceiling gets
    # both and keeps the better.
    layouts = [(1, t, False) for t in range(1, cores + 1)]
    if cores > 1:
        layouts += [(1, cores, True), (cores, 1, False)]
    return layouts


def layout_name(sessions: int, threads: int, spinning: bool) -> str:
    """ "1x2", "2x1", "1x2s" (spinning): what `--layout` takes."""
    return f"{sessions}x{threads}" + ("s" if spinning else "")


def parse_layout(text: str) -> Layout:
    sessions, _, threads = text.rstrip("s").partition("x")
    return int(sessions), int(threads), text.endswith("s")


def measure(
    model: str,
    batches: list[int],
    repository: Path,
    layouts: list[Layout] | None = None,
    phone: bool = False,
) -> dict[str, Any]:
    folder = version_dir(repository, model)
    path = folder / "model.onnx"
    cores = os.cpu_count() or 1
    served = Model(folder, cores)
    image = image_for(model, phone)
    tensor = served.tensor(image)
    name = served.input_name
    layouts = layouts or all_layouts(cores)
    grid: list[dict[str, Any]] = []
    for sessions_n, threads, spinning in layouts:
        sessions = [session(path, threads, spinning) for _ in range(sessions_n)]
        for size in batches:
            batch = np.ascontiguousarray(np.broadcast_to(tensor, (size, *tensor.shape)))
            grid.append(
                {
                    "sessions": sessions_n,
                    "threads": threads,
                    "spinning": spinning,
                    "batch": size,
                    "images_per_s": images_per_s(sessions, batch, name),
                }
            )
    single = tensor[None]
    # The reference for c=1 (batch-1 compute): the faster of sleeping and spinning threads.
    alone = [session(path, cores), session(path, cores, spinning=True, stop_after_run=True)]
    compute_ms = min(median_ms(lambda s=s: s.run(None, {name: single}), 20) for s in alone)
    decode_ms = median_ms(lambda: preprocess(image, served.metadata, max_pixels=MAX_PIXELS), 30)
    best = max(grid, key=lambda row: row["images_per_s"])
    return {
        "model": model,
        "cores": cores,
        "grid": grid,
        "best": best,
        "layout": layout_name(best["sessions"], best["threads"], best["spinning"]),
        "batch1_compute_ms": compute_ms,
        "decode_preprocess_ms": decode_ms,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--batches", default="1,4,8,16,32")
    parser.add_argument("--repository", type=Path, default=BENCH_REPOSITORY)
    parser.add_argument("--layout", help="only this layout, e.g. 1x2, 2x1, 1x2s (spinning)")
    parser.add_argument("--phone", action="store_true", help="decode the 4000x3000 photo")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    layouts = [parse_layout(args.layout)] if args.layout else None
    print(json.dumps(measure(args.model, batches, args.repository, layouts, args.phone)))


if __name__ == "__main__":
    main()
