"""Offered-load profiles: when each event is due, decided by the clock alone (open loop).

A profile is a list of segments whose rate moves linearly from ``rate_from`` to ``rate_to`` over
``seconds``; fixed, step and ramp profiles are special cases. Event ``i`` (from 0) is due at the
instant ``t`` where the expected count ``N(t) = ∫ rate`` reaches ``i``, so the schedule does not
depend on how fast the system under test answers: a slow worker shows up as latency, not as a
lower offered load (no coordinated omission).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Segment:
    seconds: float
    rate_from: float  # events per second at the start of the segment
    rate_to: float  # ... and at its end (equal for a constant rate)

    def __post_init__(self) -> None:
        """Refuse schedules that cannot be followed, at construction rather than mid-run."""
        if not (math.isfinite(self.seconds) and self.seconds > 0):
            raise ValueError(f"segment duration must be > 0 s, got {self.seconds}")
        for rate in (self.rate_from, self.rate_to):
            if not (math.isfinite(rate) and rate >= 0):
                raise ValueError(f"rates must be finite and >= 0, got {rate}")

    @property
    def events(self) -> float:
        """Expected number of events in the segment (the area under the rate)."""
        return (self.rate_from + self.rate_to) * self.seconds / 2

    def time_of(self, k: float) -> float:
        """Seconds into the segment at which ``k`` events are due, solving
        ``a·τ + (b−a)·τ²/(2D) = k`` in the form that stays exact when ``a = b`` or ``a = 0``."""
        a, b, d = self.rate_from, self.rate_to, self.seconds
        root = math.sqrt(max(0.0, a * a + 2 * (b - a) * k / d))
        return 2 * k / (a + root) if k > 0 else 0.0


@dataclass(frozen=True, slots=True)
class RateProfile:
    name: str
    segments: tuple[Segment, ...]

    @classmethod
    def fixed(cls, rate: float, seconds: float) -> RateProfile:
        return cls("fixed", (Segment(seconds, rate, rate),))

    @classmethod
    def steps(cls, steps: Sequence[tuple[float, float]]) -> RateProfile:
        """``steps``: (rate, seconds) pairs, run one after the other."""
        if not steps:
            raise ValueError("a step profile needs at least one rate:seconds step")
        return cls("step", tuple(Segment(seconds, rate, rate) for rate, seconds in steps))

    @classmethod
    def ramp(cls, rate_from: float, rate_to: float, seconds: float) -> RateProfile:
        return cls("ramp", (Segment(seconds, rate_from, rate_to),))

    @property
    def duration_s(self) -> float:
        return sum(s.seconds for s in self.segments)

    @property
    def expected_events(self) -> int:
        """How many events the schedule holds: those due strictly before the end."""
        return math.ceil(sum(s.events for s in self.segments) - 1e-9)

    def truncated(self, seconds: float) -> RateProfile:
        """The same schedule cut off after ``seconds`` (for ``--duration`` on step and ramp profiles)."""
        kept: list[Segment] = []
        left = seconds
        for s in self.segments:
            if left <= 0:
                break
            if s.seconds <= left:
                kept.append(s)
            else:
                kept.append(Segment(left, s.rate_from, self._rate_in(s, left)))
            left -= s.seconds
        if not kept:
            raise ValueError(f"cannot cut a profile to {seconds} s")
        return RateProfile(self.name, tuple(kept))

    @staticmethod
    def _rate_in(s: Segment, tau: float) -> float:
        return s.rate_from + (s.rate_to - s.rate_from) * tau / s.seconds

    def rate_at(self, t: float) -> float:
        """The offered rate (events/s) at ``t`` seconds from the start; 0 outside the profile."""
        start = 0.0
        for s in self.segments:
            if start <= t < start + s.seconds:
                return self._rate_in(s, t - start)
            start += s.seconds
        return 0.0

    def offsets(self) -> Iterator[float]:
        """Due time of every event, in seconds from the start: non-decreasing, all before the end."""
        i = 0
        start, done = 0.0, 0.0  # segment start time and the (fractional) events due before it
        for s in self.segments:
            end = done + s.events
            while i < end - 1e-9:
                yield start + min(s.time_of(i - done), s.seconds)
                i += 1
            start, done = start + s.seconds, end

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "duration_s": self.duration_s, "expected_events": self.expected_events,
                "segments": [{"seconds": s.seconds, "rate_from": s.rate_from, "rate_to": s.rate_to}
                             for s in self.segments]}


def parse_steps(text: str) -> list[tuple[float, float]]:
    """``"100:5,500:10"`` → ``[(100.0, 5.0), (500.0, 10.0)]`` (rate:seconds pairs)."""
    steps = []
    for part in text.split(","):
        rate, sep, seconds = part.strip().partition(":")
        if not sep:
            raise ValueError(f"step {part!r} is not rate:seconds")
        steps.append((float(rate), float(seconds)))
    return steps
