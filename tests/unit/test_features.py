"""Features: hand-checked values, bounded state, no mutation by compute, replay detection."""

from __future__ import annotations

import copy
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.domain.events import DuplicateEvent, LateEvent, Transaction
from stream_app.domain.features import (
    DAY_MS,
    FEATURE_NAMES,
    HOUR_MS,
    MERCHANT_CAP,
    NO_PREVIOUS_S,
    RECENT_CAP,
    SEEN_CAP,
    CardState,
    compute_features,
    featurize,
    new_state,
)

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z, a Thursday
HORIZON = 7 * DAY_MS


def tx(i: int, ts: int, amount: float = 10.0, merchant: str = "m1", country: str = "FR",
       channel: str = "pos", card: str = "c1") -> Transaction:
    return Transaction(f"t{i}", card, merchant, amount, "EUR", ts, country, channel, "5411")


def named(row: list[float]) -> dict[str, float]:
    return dict(zip(FEATURE_NAMES, row, strict=True))


def test_first_transaction_of_a_card() -> None:
    f = named(featurize({}, tx(1, T0 + 10 * HOUR_MS, amount=20.0), HORIZON))
    assert f["amount_eur"] == 20.0
    assert f["log_amount"] == pytest.approx(math.log1p(20.0))
    assert f["hour_of_day"] == 10 and f["weekday"] == 3  # Thursday
    assert f["count_1h"] == f["count_30d"] == 0
    assert f["seconds_since_prev"] == NO_PREVIOUS_S
    assert f["amount_to_mean_30d"] == 1.0
    assert f["first_use_of_merchant"] == 1.0 and f["country_changed"] == 0.0


def test_windows_count_mean_std_by_event_time() -> None:
    states: dict[str, CardState] = {}
    featurize(states, tx(1, T0, 10.0), HORIZON)
    featurize(states, tx(2, T0 + 30 * 60_000, 30.0), HORIZON)  # +30 min
    featurize(states, tx(3, T0 + 3 * DAY_MS, 50.0), HORIZON)  # +3 days
    f = named(featurize(states, tx(4, T0 + 3 * DAY_MS + 10 * 60_000, 100.0, merchant="m2", country="DE"), HORIZON))
    assert f["count_1h"] == 1 and f["mean_amount_1h"] == 50.0 and f["std_amount_1h"] == 0.0
    assert f["count_1d"] == 1
    assert f["count_7d"] == 3 and f["mean_amount_7d"] == pytest.approx(30.0)
    assert f["std_amount_7d"] == pytest.approx(math.sqrt((400 + 0 + 400) / 3))
    assert f["count_30d"] == 3
    assert f["seconds_since_prev"] == 600.0
    assert f["amount_to_mean_30d"] == pytest.approx(100 / 30)
    assert f["distinct_merchants_1d"] == 1  # m1 was used 10 minutes ago
    assert f["first_use_of_merchant"] == 1.0
    assert f["country_changed"] == 1.0


def test_old_history_leaves_the_windows() -> None:
    states: dict[str, CardState] = {}
    featurize(states, tx(1, T0, 10.0), HORIZON)
    f = named(featurize(states, tx(2, T0 + 31 * DAY_MS, 10.0), HORIZON))
    assert f["count_30d"] == 0 and f["count_7d"] == 0
    assert states["c1"].as_dict()["days"] == [[(T0 + 31 * DAY_MS) // DAY_MS, 1, 10.0, 100.0]]


def test_compute_does_not_mutate_state() -> None:
    states: dict[str, CardState] = {}
    for i in range(5):
        featurize(states, tx(i, T0 + i * HOUR_MS), HORIZON)
    before = copy.deepcopy(states["c1"])
    compute_features(states["c1"], tx(99, T0 + 10 * HOUR_MS))
    assert states["c1"] == before


def test_replay_is_detected_and_leaves_state_unchanged() -> None:
    states: dict[str, CardState] = {}
    featurize(states, tx(1, T0), HORIZON)
    before = copy.deepcopy(states)
    with pytest.raises(DuplicateEvent):
        featurize(states, tx(1, T0), HORIZON)
    assert states == before


def test_events_older_than_the_horizon_are_late() -> None:
    states: dict[str, CardState] = {}
    featurize(states, tx(1, T0 + 10 * DAY_MS), HORIZON)
    with pytest.raises(LateEvent):
        featurize(states, tx(2, T0), HORIZON)


def test_card_testing_burst_is_visible_in_1h_window() -> None:
    states: dict[str, CardState] = {}
    row = []
    for i in range(20):
        row = featurize(states, tx(i, T0 + i * 30_000, 1.0, merchant=f"m{i % 2}", channel="ecom"), HORIZON)
    f = named(row)
    assert f["count_1h"] == 19 and f["mean_amount_1h"] == 1.0 and f["is_ecom"] == 1.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60 * DAY_MS), st.floats(0.01, 5000), st.integers(0, 80)),
                min_size=1, max_size=400))
def test_state_stays_bounded_and_features_finite(events: list[tuple[int, float, int]]) -> None:
    states: dict[str, CardState] = {}
    for i, (offset, amount, merchant) in enumerate(sorted(events)):
        try:
            row = featurize(states, tx(i, T0 + offset, amount, merchant=f"m{merchant}"), HORIZON)
        except LateEvent:
            continue
        assert len(row) == len(FEATURE_NAMES)
        assert all(math.isfinite(v) for v in row)
        assert row[FEATURE_NAMES.index("count_1h")] <= RECENT_CAP
    state = states["c1"].as_dict()
    assert len(state["recent"]) <= RECENT_CAP and len(state["hours"]) <= 24
    assert len(state["days"]) <= 30 and len(state["merch"]) <= MERCHANT_CAP and len(state["seen"]) <= SEEN_CAP


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3 * DAY_MS), st.floats(0.01, 5000)), min_size=2, max_size=60))
def test_counts_match_a_brute_force_reference(events: list[tuple[int, float]]) -> None:
    """The 1 h and 30 d windows agree with recomputing from the full history."""
    events = sorted(events)
    states: dict[str, CardState] = {}
    history: list[tuple[int, float]] = []
    for i, (offset, amount) in enumerate(events):
        ts = T0 + offset
        f = named(featurize(states, tx(i, ts, amount), HORIZON))
        in_1h = [a for t, a in history if ts - HOUR_MS < t <= ts]
        assert f["count_1h"] == min(len(in_1h), RECENT_CAP)
        if len(in_1h) <= RECENT_CAP:
            assert f["mean_amount_1h"] == pytest.approx(sum(in_1h) / len(in_1h) if in_1h else 0.0)
        assert f["count_30d"] == len(history)  # all history is within 30 days
        history.append((ts, amount))


def test_a_state_reads_back_from_its_lists() -> None:
    states: dict[str, CardState] = {"c1": new_state()}
    featurize(states, tx(1, T0), HORIZON)
    featurize(states, tx(2, T0 + 1, merchant="m2", country="DE"), HORIZON)
    lists = states["c1"].as_dict()
    assert lists["merch"] == [["m1", T0], ["m2", T0 + 1]] and lists["last_country"] == "DE"
    assert CardState.from_dict(lists) == states["c1"]
