"""Latency histogram in milliseconds on top of HdrHistogram (the ``hdrhistogram`` package).

HDR keeps every value to 3 significant digits in constant memory, so p99.9 and max of a long run
are exact enough without storing each latency, and per-second histograms stay cheap. Percentiles are
read here with numpy over the histogram's counts and use the nearest-rank definition (the smallest
value that at least p % of the values do not exceed): ``hdrh``'s own ``get_value_at_percentile`` rounds
the rank (it can answer a lower bucket, e.g. 1 ms as the p90 of five 1 ms and one 2 ms values) and
walks every bucket in Python for each percentile.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour: anything slower is clamped (and already a failed run)
SIGNIFICANT_DIGITS = 3

#: The percentiles every report gives, with their names in the JSON report and RESULT line.
REPORTED = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9))


class LatencyHistogram:
    """Records latencies in ms (stored in µs, 1 µs .. 1 h, 3 significant digits)."""

    def __init__(self) -> None:
        self._h = HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
        self._sum_us = 0  # for the mean: hdrh's get_mean_value walks every bucket in Python

    def record(self, ms: float) -> None:
        us = min(HIGHEST_US, max(LOWEST_US, round(ms * 1000)))
        self._h.record_value(us)
        self._sum_us += us

    @property
    def count(self) -> int:
        return int(self._h.get_total_count())

    def percentile(self, p: float) -> float:
        """The latency (ms) that at least ``p`` % of the recorded values do not exceed; NaN when empty."""
        return self.percentiles([p])[0]

    def percentiles(self, ps: Sequence[float]) -> list[float]:
        """``percentile`` for each of ``ps``, in one pass over the counts."""
        total = self.count
        if total == 0:
            return [math.nan] * len(ps)
        cumulative = np.cumsum(np.ctypeslib.as_array(self._h.counts)[: self._h.counts_len])
        ranks = np.maximum(1, np.ceil(np.minimum(np.asarray(ps, dtype=float), 100) / 100 * total - 1e-9))
        indexes = np.searchsorted(cumulative, ranks)  # first bucket holding the rank-th value
        return [self._h.get_highest_equivalent_value(self._h.get_value_from_index(int(i))) / 1000 for i in indexes]

    @property
    def max_ms(self) -> float:
        return self._h.get_max_value() / 1000 if self.count else math.nan

    @property
    def mean_ms(self) -> float:
        return self._sum_us / self.count / 1000 if self.count else math.nan

    def summary(self) -> dict[str, float | int | None]:
        """count, p50, p90, p99, p999, max, mean in ms (None when nothing was recorded: JSON has no NaN)."""
        if self.count == 0:
            return {"count": 0, **{name: None for name, _ in REPORTED}, "max": None, "mean": None}
        values = self.percentiles([p for _, p in REPORTED])
        return {"count": self.count, **{name: round(v, 3) for (name, _), v in zip(REPORTED, values, strict=True)},
                "max": round(self.max_ms, 3), "mean": round(self.mean_ms, 3)}

    def curve(self, points_per_decade: int = 10) -> list[tuple[float, float]]:
        """(percentile, ms) pairs spaced evenly on the log scale of ``1/(1-p)``, the x axis of an HDR
        percentile plot, up to where the count still resolves them (1/(1-p) ≤ count)."""
        ps = []
        while (x := 10 ** (len(ps) / points_per_decade)) <= self.count:
            ps.append(round(100 * (1 - 1 / x), 6))
        return list(zip(ps, self.percentiles(ps), strict=True))
