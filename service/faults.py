"""TESTING ONLY: runtime fault injection (CONVSERVE_FAULT_INJECTION, docs/security.md).

'raise:N' makes the next N batches of the process raise inside `Runtime.run`, where an ONNX
Runtime failure would; 'stall:N' makes them hang there, past the watchdog, then end on their
own. A real ORT crash or hang cannot be caused on demand. Settings refuse it unless the host is a
loopback address.
"""

from __future__ import annotations

import logging
import threading
import time

logger = logging.getLogger(__name__)

FAULT_MODES = ("raise", "stall")
STALL_FACTOR = 3  # an injected stall outlives the watchdog (BATCH_TIMEOUT_S) this many times
NO_WATCHDOG_STALL_S = 10.0  # the watchdog's stand-in when it is off


def parse_fault_spec(spec: str) -> tuple[str, int]:
    """'raise:3' -> ("raise", 3): the fault-injection mode and how many batches it hits."""
    mode, _, count = spec.partition(":")
    if mode not in FAULT_MODES or not (count.isascii() and count.isdigit()) or int(count) < 1:
        raise ValueError(f"fault injection must be 'raise:N' or 'stall:N' (N >= 1), not {spec!r}")
    return mode, int(count)


class InjectedFault(RuntimeError):
    """Raised by FaultInjector in place of a real ONNX Runtime failure."""


class FaultInjector:
    """The next `count` batches of the process raise (mode "raise") or hang for `stall_s`
    seconds (mode "stall") in `before_run`. Warm-ups are never hit."""

    def __init__(self, mode: str, count: int, stall_s: float) -> None:
        self.mode = mode
        self.remaining = count
        self.stall_s = stall_s
        self._lock = threading.Lock()

    @classmethod
    def from_spec(cls, spec: str, batch_timeout_s: float) -> FaultInjector | None:
        """The injector a CONVSERVE_FAULT_INJECTION value asks for (None: ''), its stalls
        outliving a watchdog of `batch_timeout_s` (0: off)."""
        if not spec:
            return None
        mode, count = parse_fault_spec(spec)
        return cls(mode, count, stall_s=STALL_FACTOR * (batch_timeout_s or NO_WATCHDOG_STALL_S))

    def before_run(self) -> None:
        with self._lock:
            if self.remaining <= 0:
                return
            self.remaining -= 1
        logger.warning("fault injection: %s (%d left)", self.mode, self.remaining)
        if self.mode == "raise":
            raise InjectedFault("injected runtime fault (CONVSERVE_FAULT_INJECTION)")
        time.sleep(self.stall_s)
