"""What the prediction metrics cost per request: `convserve_predictions_total` and
`convserve_top1_confidence`, recorded on the event loop for every classified image.

    .venv/bin/python bench/prediction_metrics.py [--requests 3000] [--multiprocess]

Two figures on the committed lenet5-fashion model and its Fashion-MNIST sample (28x28 PNG):

- `record`: one `Predictions.record` call (a counter and a histogram increment), and the
  v2 path's `top1` + `record`, in microseconds (median of many timed loops);
- `classify`: one in-process `Classifier.classify` call (decode, batch, ONNX Runtime, top-5,
  the metrics), no HTTP, in microseconds per request, with the version's recording as it is
  ("metrics") and replaced by a no-op ("none"), interleaved round by round so that other load
  on the host falls on both alike; "x none" is the ratio.

`--multiprocess` runs it with PROMETHEUS_MULTIPROC_DIR set (a temporary folder), the value store
of `CONVSERVE_WORKERS` > 1 (memory-mapped files).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

MODEL = "lenet5-fashion"
SAMPLE = REPO_ROOT / "service/static/samples/fashion-00019.png"
ROUNDS = 10
RECORD_LOOPS = 20_000


class NoPredictions:
    def record(self, index: int, probability: float) -> None:
        pass


def time_record() -> dict[str, float]:
    import numpy as np

    from service.metrics import Metrics
    from service.postprocess import top1

    metrics = Metrics(gpu=False)
    series = metrics.prediction_series(MODEL, 1, [f"class-{i}" for i in range(10)])
    logits = np.linspace(-2.0, 3.0, 10, dtype=np.float32)

    def median_us(call: str) -> float:
        runs = timeit.repeat(
            call, globals={"series": series, "top1": top1, "logits": logits},
            number=RECORD_LOOPS, repeat=7,
        )  # fmt: skip
        return round(statistics.median(runs) / RECORD_LOOPS * 1e6, 3)

    return {
        "record_us": median_us("series.record(7, 0.93)"),
        "top1_record_us": median_us("series.record(*top1(logits))"),
    }


async def time_classify(requests: int) -> dict[str, float]:
    from service.classify import Classifier
    from service.manager import ModelManager
    from service.metrics import Metrics
    from service.schemas import ClassifyOptions
    from service.settings import Settings

    settings = Settings(model_repository=REPO_ROOT / "models", providers="cpu")
    metrics = Metrics(gpu=False)
    manager = ModelManager(settings, metrics)
    await manager.sync()
    classifier = Classifier(settings, manager, metrics)
    loaded = manager.get(MODEL)
    recording = loaded.predictions
    image = SAMPLE.read_bytes()
    options = ClassifyOptions()
    per_round = requests // ROUNDS
    timings: dict[str, list[float]] = {"metrics": [], "none": []}
    try:
        for _ in range(per_round):  # warm-up
            await classifier.classify(MODEL, None, [image], options, deadline=None)
        for _ in range(ROUNDS):
            for name, predictions in (("metrics", recording), ("none", NoPredictions())):
                loaded.predictions = predictions  # type: ignore[assignment]
                started = time.perf_counter()
                for _ in range(per_round):
                    await classifier.classify(MODEL, None, [image], options, deadline=None)
                timings[name].append((time.perf_counter() - started) / per_round * 1e6)
    finally:
        loaded.predictions = recording
        classifier.close()
        await manager.close()
    with_metrics, without = (statistics.median(timings[k]) for k in ("metrics", "none"))
    return {
        "classify_metrics_us": round(with_metrics, 1),
        "classify_none_us": round(without, 1),
        "x_none": round(with_metrics / without, 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--multiprocess", action="store_true")
    args = parser.parse_args()
    if args.multiprocess and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # prometheus_client picks its value store at import: a fresh interpreter.
        with tempfile.TemporaryDirectory() as folder:
            env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": folder}
            command = [sys.executable, __file__, "--requests", str(args.requests)]
            sys.exit(subprocess.run(command, env=env, check=False).returncode)
    result = {
        "multiprocess": bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR")),
        **time_record(),
        **asyncio.run(time_classify(args.requests)),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
