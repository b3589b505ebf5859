"""Python's cyclic garbage collector, set for a worker that allocates per event and keeps batches alive.

CPython collects its youngest generation every 700 net container allocations and the whole heap when
enough objects have survived two collections. A worker allocates tens of containers per event (state
lists, feature rows, records) and keeps each micro-batch's alive across awaits while the broker confirms it,
so with the defaults those short-lived objects survive into the oldest generation and full collections
follow one another, each walking every object the worker holds (its modules, models, entity profiles).
Measured on a 60k-event backlog (docs/notes/measurements.md): 31 full collections, 150 ms each at the
median, up to 400 ms — pauses of the event loop that every latency percentile and the HTTP door see.

Two remedies: objects that live as long as the process (what start-up built) are frozen out of every
collection once the worker is ready (:func:`freeze_startup`), and the young generation is collected less
often (:func:`set_thresholds`), so that most of a batch's objects are freed by reference counting before
a collection sees them. Reference cycles are still collected, later.
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
