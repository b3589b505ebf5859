"""The load generator's pure parts: schedules, the histogram, event bookkeeping, report and CLI parsing."""

from __future__ import annotations

import io
import math
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loadtests.histogram import LatencyHistogram
from loadtests.profiles import RateProfile, Segment, parse_steps
from loadtests.run import build_profile, is_loopback, parser
from loadtests.runner import LoadReport, _Book

rates = st.floats(0, 300, allow_nan=False)
durations = st.floats(0.05, 2, allow_nan=False)
segments = st.lists(st.tuples(durations, rates, rates), min_size=1, max_size=4)


def due_before(profile: RateProfile, t: float) -> float:
    """The expected count ∫₀ᵗ rate, computed independently of the code under test."""
    total, start = 0.0, 0.0
    for s in profile.segments:
        tau = min(max(t - start, 0.0), s.seconds)
        total += s.rate_from * tau + (s.rate_to - s.rate_from) * tau * tau / (2 * s.seconds)
        start += s.seconds
    return total


def test_fixed_rate_sends_event_i_at_i_over_rate() -> None:
    offsets = list(RateProfile.fixed(100, 2).offsets())
    assert len(offsets) == 200
    assert offsets == pytest.approx([i / 100 for i in range(200)])


def test_steps_follow_each_other_and_a_zero_step_is_a_pause() -> None:
    offsets = list(RateProfile.steps([(10, 1), (0, 1), (5, 2)]).offsets())
    assert offsets == pytest.approx([i / 10 for i in range(10)] + [2 + i / 5 for i in range(10)])


def test_ramp_from_zero_spaces_events_as_the_square_root() -> None:
    # N(t) = (b/D)·t²/2 = 50 t² for a 0 -> 100/s ramp over 1 s: event i is due at sqrt(i/50).
    offsets = list(RateProfile.ramp(0, 100, 1).offsets())
    assert len(offsets) == 50
    assert offsets == pytest.approx([math.sqrt(i / 50) for i in range(50)])


@settings(max_examples=150, deadline=None)
@given(segments)
def test_any_schedule_is_ordered_bounded_and_follows_the_rate(spec: list[tuple[float, float, float]]) -> None:
    profile = RateProfile("any", tuple(Segment(*s) for s in spec))
    offsets = list(profile.offsets())
    assert len(offsets) == profile.expected_events
    assert offsets == sorted(offsets)
    assert all(0 <= t < profile.duration_s + 1e-9 for t in offsets)
    for i, t in enumerate(offsets):  # event i is due exactly when i events are expected
        assert due_before(profile, t) == pytest.approx(i, abs=1e-6)


@given(segments, st.floats(0.01, 1))
def test_truncation_keeps_the_schedule_up_to_the_cut(spec: list[tuple[float, float, float]], share: float) -> None:
    profile = RateProfile("any", tuple(Segment(*s) for s in spec))
    cut = profile.truncated(profile.duration_s * share)
    assert cut.duration_s == pytest.approx(profile.duration_s * share)
    whole = list(profile.offsets())
    assert list(cut.offsets()) == pytest.approx(whole[:len(list(cut.offsets()))])
    assert all(t < cut.duration_s + 1e-9 for t in cut.offsets())


def test_rate_at_reads_the_profile() -> None:
    ramp = RateProfile.ramp(100, 300, 10)
    assert (ramp.rate_at(0), ramp.rate_at(5), ramp.rate_at(10)) == (100, 200, 0)


@pytest.mark.parametrize("bad", [(0, 1, 1), (1, -1, 1), (1, 1, math.inf), (math.nan, 1, 1)])
def test_impossible_segments_are_refused(bad: tuple[float, float, float]) -> None:
    with pytest.raises(ValueError):
        Segment(*bad)


def test_steps_parse_rate_colon_seconds() -> None:
    assert parse_steps("100:5, 500:10") == [(100.0, 5.0), (500.0, 10.0)]
    with pytest.raises(ValueError):
        parse_steps("100")


def test_cli_builds_each_profile() -> None:
    p = parser()
    assert build_profile(p.parse_args(["--rate", "50", "--duration", "3"])).expected_events == 150
    step = build_profile(p.parse_args(["--profile", "step", "--steps", "10:2,20:2", "--duration", "3"]))
    assert step.duration_s == 3 and step.expected_events == 40
    ramp = build_profile(p.parse_args(["--profile", "ramp", "--ramp-from", "0", "--ramp-to", "20", "--duration", "2"]))
    assert ramp.expected_events == 20


@pytest.mark.parametrize(("bootstrap", "local"), [
    ("127.0.0.1:9092", True), ("localhost:9092", True), ("[::1]:9092", True), ("127.0.0.2:1,localhost:2", True),
    ("10.0.0.5:9092", False), ("kafka.prod:9092", False), ("127.0.0.1:9092,kafka:9092", False)])
def test_only_loopback_counts_as_local(bootstrap: str, local: bool) -> None:
    assert is_loopback(bootstrap) is local


def nearest_rank(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.01, 600_000, allow_nan=False), min_size=1, max_size=400))
def test_histogram_percentiles_are_within_its_precision(values: list[float]) -> None:
    h = LatencyHistogram()
    for v in values:
        h.record(v)
    assert h.count == len(values)
    for p in (50, 90, 99, 99.9, 100):
        exact = nearest_rank(values, p)
        assert h.percentile(p) == pytest.approx(exact, rel=2e-3, abs=2e-3)
    assert h.max_ms == pytest.approx(max(values), rel=2e-3, abs=2e-3)
    assert h.mean_ms == pytest.approx(sum(values) / len(values), rel=1e-6, abs=1e-3)
    summary = h.summary()
    ordered = [summary[k] for k in ("p50", "p90", "p99", "p999", "max")]
    assert ordered == sorted(ordered)
    curve = [ms for _, ms in h.curve()]
    assert curve == sorted(curve) and len(curve) >= 1


def test_empty_histogram_reports_nothing_rather_than_zero() -> None:
    h = LatencyHistogram()
    assert math.isnan(h.percentile(50))
    assert h.summary()["p99"] is None and h.curve() == []


class Ack:
    """A produce result as the producer's future would hold it."""

    def __init__(self, partition: int, offset: int, error: Exception | None = None) -> None:
        self.partition, self.offset, self.topic, self.error = partition, offset, "tx", error

    def cancelled(self) -> bool:
        return False

    def exception(self) -> Exception | None:
        return self.error

    def result(self) -> Ack:
        return self


def score(tx_id: str) -> dict[str, Any]:
    return {"tx_id": tx_id, "timing": {"latency_ms": 3}}


def test_book_matches_scores_by_tx_id_and_dead_letters_by_position() -> None:
    ledger = io.BytesIO()
    book = _Book("r", "tx", ledger)
    book.start()
    book.add(0.0, "a", None)
    book.add(0.1, "b", "invalid_json")
    book.add(0.2, "c", None)
    book.on_dead_letter({"reason": "invalid_json", "source": {"topic": "tx", "partition": 1, "offset": 7}})
    book.on_ack(0, Ack(0, 0))  # type: ignore[arg-type]
    book.on_ack(1, Ack(1, 7))  # type: ignore[arg-type]  # its dead letter was read before the ack
    book.on_ack(2, Ack(0, 1, error=RuntimeError("broker gone")))  # type: ignore[arg-type]
    assert not book.settled()
    book.on_score(score("a"), 0.5)
    book.on_score(score("a"), 0.6)  # a redelivered score: counted, not measured twice
    book.on_score(score("other-run"), 0.6)
    assert book.settled()  # c was never acknowledged: nothing to wait for
    assert (book.scored, book.duplicates, book.malformed_dlq, book.send_errors) == (1, 1, 1, 1)
    assert book.latency.count == 1 and book.latency.percentile(50) == pytest.approx(500, rel=1e-3)
    lines = [orjson.loads(line) for line in ledger.getvalue().splitlines()]
    assert [(x["tx_id"], x["valid"], x.get("offset"), "error" in x) for x in lines] == [
        ("a", True, 0, False), ("b", False, 7, False), ("c", True, None, True)]
    assert lines[1]["expected_dlq_reason"] == "invalid_json"


def test_a_valid_event_dead_lettered_is_reported_with_its_reason() -> None:
    book = _Book("r", "tx", None)
    book.start()
    book.add(0.0, "a", None)
    book.on_ack(0, Ack(2, 3))  # type: ignore[arg-type]
    book.on_dead_letter({"reason": "late_event", "source": {"topic": "tx", "partition": 2, "offset": 3}})
    assert dict(book.valid_dlq) == {"late_event": 1} and book.outstanding() == 0 and book.settled()


def test_report_serialises_and_ends_with_a_result_line() -> None:
    report = LoadReport(run_id="r", started_at="now", bootstrap="127.0.0.1:1", options={},
                        profile=RateProfile.fixed(10, 1).describe(), sent=10, scored=9, scored_rate_eps=9.0,
                        latency_ms={"p50": 1.0, "p90": 2.0, "p99": 3.0, "p999": 4.0, "max": 5.0})
    assert orjson.loads(report.to_json())["latency_ms"]["p999"] == 4.0
    assert report.summary().splitlines()[-1] == report.result_line() == (
        "RESULT sent=10 scored=9 lost=0 eps=9.0 p50_ms=1.0 p90_ms=2.0 p99_ms=3.0 p999_ms=4.0 max_ms=5.0")
