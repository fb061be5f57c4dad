"""Client threads that keep a service busy, and waiting for a condition while they do."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import httpx

CLIENTS = 4


class Traffic:
    """Client threads posting images in a loop until stopped; every outcome is recorded."""

    def __init__(self, url: str, body: Callable[[], bytes | Iterator[bytes]]) -> None:
        self.url = url
        self.body = body
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.codes: Counter[int] = Counter()
        self.versions: Counter[int] = Counter()
        self.errors: list[str] = []
        self.in_flight = 0
        self.threads = [threading.Thread(target=self._loop) for _ in range(CLIENTS)]

    def __enter__(self) -> Traffic:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def _loop(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self.stop.is_set():
                with self.lock:
                    self.in_flight += 1
                try:
                    response = client.post(
                        self.url, content=self.body(), headers={"content-type": "image/png"}
                    )
                    with self.lock:
                        self.codes[response.status_code] += 1
                        if response.status_code == 200:
                            self.versions[response.json()["version"]] += 1
                        else:
                            self.errors.append(response.text)
                except httpx.HTTPError as err:
                    with self.lock:
                        self.errors.append(repr(err))
                finally:
                    with self.lock:
                        self.in_flight -= 1

    def answered(self) -> int:
        with self.lock:
            return sum(self.codes.values())


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)
