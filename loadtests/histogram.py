"""Latency histogram in milliseconds on top of HdrHistogram (the ``hdrhistogram`` package).

HDR keeps every value to 3 significant digits in constant memory, so p99.9 and max of a long run
are exact enough without storing each latency, and per-second histograms stay cheap.
"""

from __future__ import annotations

import math

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

    def record(self, ms: float) -> None:
        us = min(HIGHEST_US, max(LOWEST_US, round(ms * 1000)))
        self._h.record_value(us)

    @property
    def count(self) -> int:
        return int(self._h.get_total_count())

    def percentile(self, p: float) -> float:
        """The latency (ms) that ``p`` % of the recorded values do not exceed; NaN when empty."""
        if self.count == 0:
            return math.nan
        return self._h.get_value_at_percentile(p) / 1000

    @property
    def max_ms(self) -> float:
        return self._h.get_max_value() / 1000 if self.count else math.nan

    @property
    def mean_ms(self) -> float:
        return self._h.get_mean_value() / 1000 if self.count else math.nan

    def summary(self) -> dict[str, float | int | None]:
        """count, p50, p90, p99, p999, max, mean in ms (None when nothing was recorded: JSON has no NaN)."""
        if self.count == 0:
            return {"count": 0, **{name: None for name, _ in REPORTED}, "max": None, "mean": None}
        return {"count": self.count, **{name: round(self.percentile(p), 3) for name, p in REPORTED},
                "max": round(self.max_ms, 3), "mean": round(self.mean_ms, 3)}

    def curve(self, points_per_decade: int = 10) -> list[tuple[float, float]]:
        """(percentile, ms) pairs spaced evenly on the log scale of ``1/(1-p)``, the x axis of an HDR
        percentile plot, up to where the count still resolves them (1/(1-p) ≤ count)."""
        out: list[tuple[float, float]] = []
        j = 0
        while (x := 10 ** (j / points_per_decade)) <= self.count:
            p = 100 * (1 - 1 / x)
            out.append((round(p, 6), self.percentile(p)))
            j += 1
        return out
