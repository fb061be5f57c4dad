"""Float32 against int8 (`training.export --int8`): ONNX Runtime images/s of version folders in one
process, on the same batch, their runs interleaved so that load from other work on the host slows
each alike; prints each folder's best images/s and its ratio to the first folder's.

    python bench/int8.py models/r18/1 models/r18/2 --batches 1,8 --threads 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

REPO_ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 15  # best of: the fastest round is the one least disturbed by other work


def session(folder: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(
        str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folders", type=Path, nargs="+", help="version folders; the first is 1x")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    args = parser.parse_args()
    sessions = {str(f): session(f, args.threads) for f in args.folders}
    meta = json.loads((args.folders[0] / "metadata.json").read_text())
    shape = meta["input"]["shape"]
    rng = np.random.default_rng(0)
    for batch in (int(b) for b in args.batches.split(",")):
        images = rng.standard_normal((batch, *shape)).astype(np.float32)
        feeds = {name: {s.get_inputs()[0].name: images} for name, s in sessions.items()}
        for name, s in sessions.items():  # warm-up
            s.run(["logits"], feeds[name])
        best = dict.fromkeys(sessions, float("inf"))
        for _ in range(args.rounds):
            for name, s in sessions.items():
                start = time.perf_counter()
                s.run(["logits"], feeds[name])
                best[name] = min(best[name], time.perf_counter() - start)
        baseline = batch / best[str(args.folders[0])]
        for name, seconds in best.items():
            rate = batch / seconds
            sys.stdout.write(
                f"batch {batch:3d}  {rate:8.1f} images/s  {rate / baseline:5.2f}x  {name}\n"
            )


if __name__ == "__main__":
    main()
