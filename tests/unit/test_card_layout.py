"""The card state's compiled loops against the list code they replaced (``card_reference``): the same features,
the same refusals and the same state, over streams with late events, replays, many merchants and long gaps."""

from __future__ import annotations

import math

import card_reference as reference
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.domain.events import DuplicateEvent, LateEvent, Transaction
from stream_app.domain.features import DAY_MS, HOUR_MS, CardState, compute_features, featurize, tx_hash

T0 = 1_767_225_600_000
HORIZON = 7 * DAY_MS

# an event: (step in ms, 0: a new tx_id, k > 0: the tx_id of k events back, amount, merchant, country)
EVENTS = st.lists(st.tuples(st.one_of(st.integers(-3 * HOUR_MS, 2 * HOUR_MS), st.integers(0, 12 * DAY_MS),
                                      st.sampled_from([0, 1, -8 * DAY_MS, 31 * DAY_MS])),
                            st.sampled_from([0, 0, 0, 0, 1, 3]), st.floats(0.0, 5000.0),
                            st.integers(0, 45), st.sampled_from(["FR", "DE", "US"])),
                  min_size=1, max_size=300)
# bursts: past the caps (64 in the hour, 128 tx_ids, 32 merchants), events out of order, replays
DENSE = st.lists(st.tuples(st.integers(-20 * 60_000, 10 * 60_000), st.sampled_from([0] * 8 + [1, 2, 130]),
                           st.sampled_from([1.0, 9.99, 250.0]), st.integers(0, 60), st.just("FR")),
                 min_size=140, max_size=400)


def outcome(call: object) -> object:
    try:
        return call()  # type: ignore[operator]
    except (DuplicateEvent, LateEvent) as e:
        return type(e).__name__, str(e)


@settings(max_examples=150, deadline=None)
@given(st.one_of(EVENTS, DENSE))
def test_compiled_state_matches_the_list_code(events: list[tuple[int, int, float, int, str]]) -> None:
    states: dict[str, CardState] = {}
    ref = reference.new_state()
    ts = T0
    ids: list[str] = []
    for i, (step, back, amount, merchant, country) in enumerate(events):
        ts = max(0, ts + step)
        tx_id = ids[-back] if 0 < back <= len(ids) else f"t{i}"
        ids.append(tx_id)
        tx = Transaction(tx_id, "c1", f"m{merchant}", amount, "EUR", ts, country, "ecom" if i % 3 else "pos", "5411")

        def by_list(tx: Transaction = tx) -> list[float]:
            h = tx_hash(tx.tx_id)
            reference.check_new(ref, tx, HORIZON, h)
            row = reference.compute_features(ref, tx)
            reference.update_state(ref, tx, HORIZON, h)
            ref.setdefault("first_ts", tx.ts_ms)
            return row

        expected = outcome(by_list)
        got = outcome(lambda tx=tx: featurize(states, tx, HORIZON))
        assert got == expected, (i, tx)  # the same floats, bit for bit
        if "c1" in states:
            assert states["c1"].as_dict() == ref
            assert CardState.from_dict(ref) == states["c1"]


def test_a_state_from_lists_computes_what_the_lists_did() -> None:
    """A card stored in format v1/v2 (lists) gives the same features once read into the array."""
    ref = reference.new_state()
    for i in range(40):
        tx = Transaction(f"t{i}", "c1", f"m{i % 7}", 3.0 * i, "EUR", T0 + i * 997_000, "FR", "pos", "5411")
        h = tx_hash(tx.tx_id)
        reference.update_state(ref, tx, HORIZON, h)
    probe = Transaction("p", "c1", "m3", 12.5, "EUR", T0 + 41 * 997_000, "DE", "atm", "5411")
    row = compute_features(CardState.from_dict(ref), probe)
    assert row == reference.compute_features(ref, probe)
    assert all(math.isfinite(x) for x in row)


def test_a_state_copy_is_independent() -> None:
    states: dict[str, CardState] = {}
    featurize(states, Transaction("t1", "c1", "m1", 5.0, "EUR", T0, "FR", "pos", "5411"), HORIZON)
    copy = states["c1"].copy()
    featurize(states, Transaction("t2", "c1", "m2", 5.0, "EUR", T0 + 1, "FR", "pos", "5411"), HORIZON)
    assert copy != states["c1"] and copy.last_ts == T0 and copy.first_ts == T0
    with pytest.raises(DuplicateEvent):
        featurize({"c1": copy}, Transaction("t1", "c1", "m1", 5.0, "EUR", T0 + 2, "FR", "pos", "5411"), HORIZON)
