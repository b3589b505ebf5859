"""Python's cyclic garbage collector, set for a worker that allocates per event and keeps batches alive.

CPython collects its youngest generation every 700 net container allocations and the whole heap when
enough objects have survived two collections. A worker allocates tens of containers per event (state
lists, feature rows, records) and keeps each micro-batch's alive across awaits while the broker confirms it,
so with the defaults those short-lived objects survive into the oldest generation and full collections
follow one another, each walking every object the worker holds (its modules, models, entity profiles).
Measured on a 60k-event backlog (docs/notes/measurements.md): 32 full collections, 120-140 ms each at the
median, up to ~190 ms (400 on a loaded machine) — pauses of the event loop that every latency percentile and
the HTTP door see.

Two remedies. Once the worker is ready, what start-up built (about 170k objects that live as long as the
process) is collected once and frozen out of every later collection (:func:`freeze_startup`): that alone made a
full collection ~15-20 ms instead of ~125. And full collections run ten times less often than CPython's
(``STREAM_APP_GC_THRESHOLDS`` 700,10,100): five instead of thirteen over a 30k-event backlog. A larger young
generation (10,000) was tried: no faster, and its collections paused the loop up to ~14 ms instead of ~3.
Reference cycles are still collected, later.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from prometheus_client import Histogram


def set_thresholds(thresholds: tuple[int, int, int] | None) -> None:
    """``Settings.gc_threshold_values()``; None leaves CPython's."""
    if thresholds is not None:
        gc.set_threshold(*thresholds)


def freeze_startup() -> int:
    """Collect once, then move every object alive now (modules, models, settings) out of the collector's
    sight for good; returns how many. Call it when start-up is over."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class PauseTimer:
    """Observes every collection's duration into ``histogram`` (labelled by generation)."""

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.histogram.labels(str(info["generation"])).observe(time.perf_counter() - self._started)

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)
