"""How long a large answer holds other requests: one v2 infer asking for every feature map of
N images as JSON, while a thread sends GET /health/live every 10 ms and records each wait.

    .venv/bin/python -m training.export --arch resnet18 --weights r18.pth --name resnet18-maps \\
        --repository /tmp/maps            # any weights file: torch.save(resnet18().state_dict())
    .venv/bin/python bench/answer_stall.py --repository /tmp/maps --model resnet18-maps --images 4

Prints, per round, the answer's size and time and the probe's worst and median wait. The
answer is written off the event loop; what this measures is whether writing it holds the GIL
(and so the loop) for long stretches (docs/v2.md, "Counts before work").
"""

from __future__ import annotations

import argparse
import base64
import io
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.compare import stop  # noqa: E402
from bench.load import start_service  # noqa: E402

PROBE_EVERY_S = 0.01


def request_body(images: int, outputs: list[str]) -> dict[str, object]:
    rng = np.random.default_rng(0)
    encoded = []
    for _ in range(images):
        buffer = io.BytesIO()
        pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buffer, format="PNG")
        encoded.append(base64.b64encode(buffer.getvalue()).decode())
    return {
        "inputs": [{"name": "image", "shape": [images], "datatype": "BYTES", "data": encoded}],
        "outputs": [{"name": name} for name in outputs],
    }


def one_round(url: str, model: str, body: dict[str, object]) -> str:
    waits: list[float] = []
    done = threading.Event()

    def probe() -> None:
        with httpx.Client() as client:
            while not done.is_set():
                started = time.perf_counter()
                client.get(f"{url}/health/live")
                waits.append(time.perf_counter() - started)
                time.sleep(PROBE_EVERY_S)

    thread = threading.Thread(target=probe)
    thread.start()
    time.sleep(0.3)
    started = time.perf_counter()
    answer = httpx.post(f"{url}/v2/models/{model}/infer", json=body, timeout=300)
    took = time.perf_counter() - started
    time.sleep(0.3)
    done.set()
    thread.join()
    return (
        f"status {answer.status_code}, {len(answer.content):,} bytes in {took:.2f} s; "
        f"/health/live waited at most {max(waits) * 1000:.0f} ms "
        f"(median {statistics.median(waits) * 1000:.1f} ms, {len(waits)} probes)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repository", type=Path, required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    env = {
        "CONVSERVE_MODEL_REPOSITORY": str(args.repository),
        "CONVSERVE_MODELS": args.model,
        "CONVSERVE_DEFAULT_MODEL": args.model,
    }
    process, url, _ = start_service(env)
    try:
        outputs = [o["name"] for o in httpx.get(f"{url}/v2/models/{args.model}").json()["outputs"]]
        body = request_body(args.images, outputs)
        for index in range(args.rounds):
            print(f"round {index + 1}: {one_round(url, args.model, body)}", flush=True)
    finally:
        stop(process)


if __name__ == "__main__":
    main()
