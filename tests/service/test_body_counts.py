"""Small compressed bodies that would take seconds to split or parse are refused from their
counts first (JSON values, v2 batch size, BYTES elements, images per request), and no heavy
parsing runs on the event loop: a health probe sent beside them stays fast.

The service runs in its own process, so that the probe's timings are the server's alone. No
timing is asserted but counts over a bound: at most one probe of many slower than 100 ms."""

from __future__ import annotations

import gzip
import json
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.errors import BadRequest
from service.v2.codec import split_bytes
from tests.service.server import ServiceProcess

MODEL = "tiny-cnn"  # 1 x 16 x 16 input; a batch holds at most 32 rows (the setting's default)
INFER = f"/v2/models/{MODEL}/infer"
GZIP = {"content-encoding": "gzip"}
PROBE_INTERVAL_S = 0.01
SLOW_PROBE_S = 0.1
SLOW_ANSWER_S = 1.0
ROUNDS = 3  # each body alone, this many times, then every body at once


@dataclass(frozen=True)
class Hostile:
    path: str
    body: bytes  # gzip
    headers: dict[str, str]
    fragment: str  # in the 400's message


def compact(document: object) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


def binary_bytes_input(shape: list[int], elements: int) -> Hostile:
    """A v2 binary BYTES input of `elements` zero-length elements: 4 bytes each."""
    head = compact(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": shape,
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 4 * elements},
                }
            ]
        }
    )
    return Hostile(
        INFER,
        gzip.compress(head + b"\0" * (4 * elements)),
        {**GZIP, "Inference-Header-Content-Length": str(len(head))},
        "",
    )


def hostile_bodies() -> dict[str, Hostile]:
    """Each under 20 KB, each over 12 MB inflated: seconds of parsing before the counts."""
    four_million = binary_bytes_input([4_000_000], 4_000_000)
    two_of_four_million = binary_bytes_input([2], 4_000_000)
    fp32 = {"name": "input", "shape": [10_000, 1, 16, 16], "datatype": "FP32"}
    return {
        "v2-binary-bytes-4M": Hostile(
            four_million.path, four_million.body, four_million.headers, "batch size 4000000"
        ),
        "v2-binary-bytes-shape-2": Hostile(
            two_of_four_million.path,
            two_of_four_million.body,
            two_of_four_million.headers,
            "more than 2 BYTES elements",
        ),
        "v2-json-bytes-4M": Hostile(
            INFER,
            gzip.compress(
                compact(
                    {
                        "inputs": [
                            {
                                "name": "image",
                                "shape": [4_000_000],
                                "datatype": "BYTES",
                                "data": [""] * 4_000_000,
                            }
                        ]
                    }
                )
            ),
            GZIP,
            "array values",
        ),
        "v2-json-fp32-10k-rows": Hostile(
            INFER,
            gzip.compress(compact({"inputs": [{**fp32, "data": [0] * (10_000 * 256)}]})),
            GZIP,
            "array values, more than a full batch of this model's inputs needs: send at most",
        ),
        "v1-json-images-5M": Hostile(
            f"/v1/models/{MODEL}/classify",
            gzip.compress(compact({"images": [""] * 5_000_000})),
            {**GZIP, "content-type": "application/json"},
            "more than 256 images",
        ),
    }


class Probe:
    """GET /health/live every 10 ms from a thread, recording each latency."""

    def __init__(self, base_url: str) -> None:
        self.latencies_s: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(base_url,), daemon=True)

    def _run(self, base_url: str) -> None:
        with httpx.Client(base_url=base_url, timeout=30) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                assert client.get("/health/live").status_code == 200
                self.latencies_s.append(time.perf_counter() - started)
                time.sleep(PROBE_INTERVAL_S)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


@pytest.fixture(scope="module")
def service(tiny_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("body-counts") / "service.log"
    with ServiceProcess(
        log, model_repository=tiny_repo, default_model=MODEL, providers="cpu"
    ) as process:
        yield process.base_url


def _send(client: httpx.Client, hostile: Hostile) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    response = client.post(hostile.path, content=hostile.body, headers=hostile.headers)
    return response, time.perf_counter() - started


def _message(response: httpx.Response) -> str:
    error = response.json()["error"]
    return error if isinstance(error, str) else str(error["message"])


@pytest.mark.slow
def test_hostile_counts_are_refused_at_once_and_the_loop_stays_free(service: str) -> None:
    bodies = hostile_bodies()
    answers: list[tuple[str, httpx.Response, float]] = []
    with (
        httpx.Client(base_url=service, timeout=60) as client,
        Probe(service) as probe,
        ThreadPoolExecutor(len(bodies) * 2) as pool,
    ):
        time.sleep(0.2)  # a few probes on an idle server first
        for _ in range(ROUNDS):
            for name, hostile in bodies.items():
                answers.append((name, *_send(client, hostile)))
        at_once = {
            name: [pool.submit(_send, client, hostile) for _ in range(2)]
            for name, hostile in bodies.items()
        }
        for name, futures in at_once.items():
            answers += [(name, *future.result()) for future in futures]
        time.sleep(0.2)
    alone_s = [took_s for _, _, took_s in answers[: ROUNDS * len(bodies)]]
    slow_probes = sum(latency > SLOW_PROBE_S for latency in probe.latencies_s)
    print(  # noqa: T201
        f"\n{len(answers)} hostile bodies: alone {min(alone_s) * 1000:.0f}-"
        f"{max(alone_s) * 1000:.0f} ms; {len(probe.latencies_s)} probes, worst "
        f"{max(probe.latencies_s) * 1000:.0f} ms, {slow_probes} over {SLOW_PROBE_S * 1000:.0f} ms"
    )
    assert len(probe.latencies_s) >= 20
    assert slow_probes <= 1
    assert sum(took_s > SLOW_ANSWER_S for took_s in alone_s) <= 1
    for name, response, _ in answers:
        assert response.status_code == 400, (name, response.text)
        assert bodies[name].fragment in _message(response), (name, response.text)


def test_split_bytes_stops_past_the_count() -> None:
    raw = struct.pack("<I", 1) + b"a" + b"\0" * 4_000_000
    with pytest.raises(BadRequest, match="more than 1 BYTES elements"):
        split_bytes(raw, "image", 1)
    assert split_bytes(raw[:5], "image", 1) == [b"a"]
