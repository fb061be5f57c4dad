"""How far behind the event loop runs: the overload signal no queue shows.

On a tiny model the event loop itself saturates first: requests then wait in the socket buffers
before any Python sees them, where no queue bound or in-flight count can see them. A sleeper
that wakes every `interval_s` and records how much later than asked it woke measures that wait:
each step of every request waits about as long.
"""

from __future__ import annotations

import asyncio

INTERVAL_S = 0.005
DECAY = 0.8  # per wake-up: a lag is seen at once, and forgotten over ~20 wake-ups


class LoopLag:
    def __init__(self, interval_s: float = INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.lag_s = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + self.interval_s
            await asyncio.sleep(self.interval_s)
            late = max(0.0, loop.time() - expected)
            self.lag_s = late if late > self.lag_s else DECAY * self.lag_s + (1 - DECAY) * late
