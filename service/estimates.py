"""How long compute takes, for the batcher's admission and batch sizes (service/batching.py).

`ImageTimes`: measured compute seconds per image, moving averages kept apart for a batch that
ran alone (solo) and one that ran beside another (on CPU it shares the cores). `start_after`:
when instances coming free reach an image behind queued work.
"""

from __future__ import annotations

from collections.abc import Sequence

SMOOTHING = 0.2  # weight of the newest batch in the seconds-per-image average


class ImageTimes:
    def __init__(self) -> None:
        self._seconds = {True: 0.0, False: 0.0}

    def record(self, *, solo: bool, per_image_s: float) -> None:
        previous = self._seconds[solo]
        self._seconds[solo] = (
            per_image_s if not previous else SMOOTHING * per_image_s + (1 - SMOOTHING) * previous
        )

    def per_image(self, *, solo: bool) -> float:
        """Seconds per image of a batch running alone (`solo`) or beside another; the other's
        figure until this one is measured (0 before any)."""
        return self._seconds[solo] or self._seconds[not solo]

    @property
    def slowest(self) -> float:
        """The slower of the two (0 before any): what a batch may take beside another."""
        return max(self._seconds.values())


def start_after(free_in: Sequence[float], work_s: float) -> float:
    """When instances, free after `free_in` seconds each (sorted), have together computed
    `work_s` seconds of queued work, sharing it as each comes free: the moment the next image
    would start."""
    for active in range(1, len(free_in)):
        span = (free_in[active] - free_in[active - 1]) * active  # work done before one more frees
        if work_s <= span:
            return free_in[active - 1] + work_s / active
        work_s -= span
    return free_in[-1] + work_s / len(free_in)
