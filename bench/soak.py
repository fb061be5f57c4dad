"""Soak: mixed traffic against `python -m service` for a long run, the server's RSS sampled.

Not in CI. Starts the service on a free port (CONVSERVE_* from the environment; ./models by
default), then `--clients` threads loop over a mix of requests: raw PNG and JPEG, multipart
with several images, JSON base64, feature maps as PNG and float16, v2 infer with a BYTES image,
and bad inputs from tests/badinputs.py. RSS (VmRSS of the server process) is sampled every
`--sample-s`; the report gives RSS after warm-up, at the end, its growth and the slope over
the second half of the run (a leak grows linearly with requests; allocator warm-up does not).

    .venv/bin/python bench/soak.py --duration-s 600          # the 10-minute soak
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[1]
MIB = 1024 * 1024


@dataclass(frozen=True)
class Request:
    kind: str
    path: str
    content: bytes
    content_type: str


def _image(fmt: str, size: tuple[int, int], seed: int, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def _multipart(images: list[bytes]) -> tuple[bytes, str]:
    boundary = "soak-boundary"
    body = b""
    for index, data in enumerate(images):
        body += (
            (
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                f'filename="{index}.png"\r\nContent-Type: image/png\r\n\r\n'
            ).encode()
            + data
            + b"\r\n"
        )
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def request_mix(model: str) -> list[Request]:
    sys.path.insert(0, str(REPO_ROOT))
    from tests.badinputs import corpus

    png = _image("PNG", (28, 28), 1, "L")
    jpeg = _image("JPEG", (64, 48), 2)
    classify = f"/v1/models/{model}/classify"
    multipart, multipart_type = _multipart([_image("PNG", (30, 30), s) for s in range(3)])
    json_body = json.dumps({"images": [base64.b64encode(png).decode()] * 2}).encode()
    v2_body = json.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [1],
                    "datatype": "BYTES",
                    "data": [base64.b64encode(jpeg).decode()],
                }
            ],
            "parameters": {"classification": 3},
        }
    ).encode()
    mix = [
        Request("png", classify, png, "image/png"),
        Request("jpeg", classify, jpeg, "image/jpeg"),
        Request("multipart", classify, multipart, multipart_type),
        Request("json", classify, json_body, "application/json"),
        Request("maps-png", classify + "?feature_maps=all", png, "image/png"),
        Request("maps-f16", classify + "?feature_maps=all&map_format=float16", png, "image/png"),
        Request("v2", f"/v2/models/{model}/infer", v2_body, "application/json"),
    ]
    # Every 7th bad input (about 30), one after each round of the good requests.
    bad = [Request("bad", classify, b.body, b.content_type or "") for b in corpus()[::7]]
    return [r for b in bad for r in (*mix, b)]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


class Load:
    """Client threads cycling through the request mix until stopped; codes counted."""

    def __init__(self, base_url: str, mix: list[Request], clients: int) -> None:
        self.base_url = base_url
        self.mix = mix
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.codes: Counter[str] = Counter()
        self.threads = [
            threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(clients)
        ]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def total(self) -> int:
        with self.lock:
            return sum(self.codes.values())

    def _loop(self, offset: int) -> None:
        index = offset
        with httpx.Client(base_url=self.base_url, timeout=60) as client:
            while not self.stop.is_set():
                request = self.mix[index % len(self.mix)]
                index += 1
                headers = {"content-type": request.content_type} if request.content_type else {}
                try:
                    status = str(
                        client.post(
                            request.path, content=request.content, headers=headers
                        ).status_code
                    )
                except httpx.HTTPError as err:
                    status = type(err).__name__
                with self.lock:
                    self.codes[f"{request.kind}:{status}"] += 1


def slope_mib_per_min(samples: list[tuple[float, int]]) -> float:
    """Least-squares RSS slope over the second half of the samples, MiB per minute."""
    half = samples[len(samples) // 2 :]
    if len(half) < 2:
        return 0.0
    t = np.array([s[0] for s in half])
    rss = np.array([s[1] for s in half], dtype=np.float64) / MIB
    return float(np.polyfit(t / 60.0, rss, 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=600.0, help="Timed soak length.")
    parser.add_argument("--warmup-s", type=float, default=20.0, help="Load before the 1st sample.")
    parser.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling interval.")
    parser.add_argument("--clients", type=int, default=4, help="Client threads.")
    parser.add_argument("--model", default="lenet5-fashion")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO_ROOT))
    from bench.load import start_service

    process, base_url, log = start_service(
        {"CONVSERVE_PROVIDERS": os.environ.get("CONVSERVE_PROVIDERS", "cpu")}
    )
    load = Load(base_url, request_mix(args.model), args.clients)
    samples: list[tuple[float, int]] = []
    try:
        load.start()
        time.sleep(args.warmup_s)
        started = time.monotonic()
        requests_at_start = load.total()
        while (elapsed := time.monotonic() - started) < args.duration_s:
            samples.append((elapsed, rss_bytes(process.pid)))
            time.sleep(min(args.sample_s, max(0.0, args.duration_s - elapsed)))
        samples.append((time.monotonic() - started, rss_bytes(process.pid)))
        requests = load.total() - requests_at_start
    finally:
        load.finish()
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
    start_rss, end_rss = samples[0][1], samples[-1][1]
    peak = max(rss for _, rss in samples)
    growth = end_rss - start_rss
    report = {
        "duration_s": round(samples[-1][0], 1),
        "clients": args.clients,
        "requests": requests,
        "rss_start_mib": round(start_rss / MIB, 1),
        "rss_end_mib": round(end_rss / MIB, 1),
        "rss_peak_mib": round(peak / MIB, 1),
        "rss_growth_mib": round(growth / MIB, 2),
        "growth_bytes_per_request": round(growth / max(requests, 1), 1),
        "second_half_slope_mib_per_min": round(slope_mib_per_min(samples), 3),
        "codes": dict(sorted(load.codes.items())),
        "server_log": str(log),
    }
    print(json.dumps(report, indent=2))
    errors = {k: v for k, v in load.codes.items() if not k.split(":")[1].startswith(("2", "4"))}
    if errors:
        print(f"non-2xx/4xx answers: {errors}")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
