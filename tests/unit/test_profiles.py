"""Entity profiles: windows, distinct cards, label-derived risk without future labels, shrinkage, bounds."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.domain.events import Transaction
from stream_app.domain.features import DAY_MS, HOUR_MS, featurize
from stream_app.domain.profiles import (
    EntitySpec,
    RiskSettings,
    add_compromise_evidence,
    as_dict,
    compromise_suspects,
    copy_profile,
    entity_features,
    expired,
    feature_names,
    features,
    from_dict,
    learn_label,
    new_profile,
    observe,
)

T0 = 1_767_225_600_000  # 2026-01-01T00:00Z
MERCHANT = EntitySpec("merchant", "merchant_id")
RISK = RiskSettings(maturity_days=7, prior_weight=20.0, ttl_days=60)


def tx(i: int, ts: int, card: str = "c1", merchant: str = "m1", amount: float = 10.0) -> Transaction:
    return Transaction(f"t{i}", card, merchant, amount, "EUR", ts, "FR", "pos", "5411")


def named(row: list[float]) -> dict[str, float]:
    return dict(zip(feature_names(MERCHANT), row, strict=True))


def test_windows_and_counts_over_every_card_that_paid_there() -> None:
    p = new_profile()
    for i, (card, amount) in enumerate([("a", 10.0), ("b", 30.0), ("c", 20.0)]):
        observe(p, tx(i, T0 + i * HOUR_MS, card=card, amount=amount))
    f = named(features(p, tx(9, T0 + 2 * HOUR_MS + 60_000), 0.01, RISK))
    assert f["merchant_count_1d"] == 3 and f["merchant_mean_amount_1d"] == 20.0
    assert math.isclose(f["merchant_std_amount_1d"], math.sqrt(200 / 3))
    assert f["merchant_count_1h"] == 1  # the current hour bucket
    assert f["merchant_n_total"] == 3 and math.isclose(f["merchant_age_days"], (2 * HOUR_MS + 60_000) / DAY_MS)
    assert 2.5 <= f["merchant_distinct_cards"] <= 3.5


def test_distinct_cards_is_a_bounded_sketch() -> None:
    p = new_profile()
    for i in range(2000):
        observe(p, tx(i, T0 + i * 1000, card=f"card{i % 500}"))
    assert abs(as_dict(p)["distinct"] - 500) < 500 * 0.35
    assert len(pickle.dumps(p)) < 6000  # a fixed layout: 680 floats


def test_a_label_counts_only_from_its_arrival_on() -> None:
    p = new_profile()
    observe(p, tx(1, T0))
    learn_label(p, T0, arrived_ms=T0 + 3 * DAY_MS, is_fraud=True)
    before = named(features(p, tx(2, T0 + 2 * DAY_MS), 0.01, RISK))
    after = named(features(p, tx(3, T0 + 3 * DAY_MS + HOUR_MS), 0.01, RISK))
    assert before["merchant_fraud_labels_7d"] == 0  # arrived after this event: never seen at its time
    assert after["merchant_fraud_labels_1d"] == after["merchant_fraud_labels_7d"] == 1


def test_fraud_shares_use_mature_transactions_only_and_shrink_toward_the_prior() -> None:
    prior = 0.01
    fresh = named(features(None, tx(1, T0), prior, RISK))
    assert fresh["merchant_fraud_share_7d"] == fresh["merchant_fraud_share_30d"] == prior  # 0/0 reads as the prior
    p = new_profile()
    for i in range(20):  # 20 transactions 10 days ago (mature), 20 yesterday (not yet)
        observe(p, tx(i, T0 + i * 60_000))
        observe(p, tx(100 + i, T0 + 9 * DAY_MS + i * 60_000))
    for i in range(10):
        learn_label(p, T0 + i * 60_000, T0 + 9 * DAY_MS, is_fraud=True)
    learn_label(p, T0 + 9 * DAY_MS, T0 + 10 * DAY_MS - 1, is_fraud=True)  # a young transaction's early label
    f = named(features(p, tx(999, T0 + 10 * DAY_MS), prior, RISK))
    assert math.isclose(f["merchant_fraud_share_30d"], (10 + 20 * prior) / (20 + 20))
    assert f["merchant_fraud_labels_30d"] == 11
    learn_label(p, T0, T0 + 9 * DAY_MS, is_fraud=False)  # a legit label changes no count
    assert named(features(p, tx(999, T0 + 10 * DAY_MS), prior, RISK)) == f


def test_common_point_of_compromise() -> None:
    """A skimmer at m_skim: every card that paid there is defrauded elsewhere days later."""
    states: dict[str, dict[str, object]] = {}
    merchants = {m: new_profile() for m in ("m_skim", "m_a", "m_b", "m_fraud")}
    i = 0
    for c in range(30):
        card = f"card{c}"
        for day, merchant in ((1, "m_skim" if c < 10 else "m_a"), (2, "m_b")):
            t = tx(i, T0 + day * DAY_MS + c * 60_000, card=card, merchant=merchant)
            featurize(states, t, 7 * DAY_MS)  # type: ignore[arg-type]
            observe(merchants[merchant], t)
            i += 1
    for c in range(10):  # the skimmed cards, defrauded at another merchant on day 5; labels on day 12
        fraud_ts = T0 + 5 * DAY_MS + c * 60_000
        t = tx(i, fraud_ts, card=f"card{c}", merchant="m_fraud")
        featurize(states, t, 7 * DAY_MS)  # type: ignore[arg-type]
        i += 1
        for suspect in compromise_suspects(states[f"card{c}"], fraud_ts):  # type: ignore[arg-type]
            add_compromise_evidence(merchants[suspect], T0 + 12 * DAY_MS)
    at = tx(i, T0 + 12 * DAY_MS + HOUR_MS, merchant="m_skim")
    f = {m: named(features(p, at, 0.01, RISK)) for m, p in merchants.items()}
    assert {m: v["merchant_compromise_7d"] for m, v in f.items()} == {"m_skim": 10, "m_a": 0, "m_b": 10, "m_fraud": 0}
    # m_b was every card's stop, defrauded or not: per card seen there, the skimmer stands out
    assert f["m_skim"]["merchant_compromise_per_card_30d"] > 0.8 > 0.5 > f["m_b"]["merchant_compromise_per_card_30d"]


def test_idle_profiles_expire() -> None:
    p = new_profile()
    observe(p, tx(1, T0))
    assert not expired(p, T0 + 59 * DAY_MS, RISK) and expired(p, T0 + 61 * DAY_MS, RISK)


def test_an_event_without_the_entity_field_gets_a_never_seen_profile() -> None:
    device = EntitySpec("device", "device_id")  # not a Transaction field (yet): every event lacks it
    row = entity_features([MERCHANT, device], {("merchant", "m1"): new_profile()}, tx(1, T0), 0.02, RISK)
    assert len(row) == 2 * len(feature_names(MERCHANT))
    assert row[len(row) // 2:] == features(None, tx(1, T0), 0.02, RISK)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 90 * 24), st.integers(0, 40), st.floats(0, 1e5),
                          st.booleans(), st.integers(0, 20 * 24)), min_size=1, max_size=60))
def test_features_stay_finite_and_state_stays_bounded(events: list[tuple[int, int, float, bool, int]]) -> None:
    p = new_profile()
    for i, (hour, card, amount, fraud, delay_h) in enumerate(sorted(events)):
        t = tx(i, T0 + hour * HOUR_MS, card=f"c{card}", amount=amount)
        row = features(p, t, 0.01, RISK)
        assert len(row) == len(feature_names(MERCHANT)) and all(math.isfinite(v) for v in row)
        observe(p, t)
        learn_label(p, t.ts_ms, t.ts_ms + delay_h * HOUR_MS, fraud)
        add_compromise_evidence(p, t.ts_ms)
    view = as_dict(p)
    assert len(view["days"]) <= 30 and len(view["hours"]) <= 24 and len(view["hll"]) == 64
    assert all(len(view[k]) <= 31 for k in ("fraud_by_tx_day", "fraud_arrived", "compromise"))
    assert np.array_equal(from_dict(view), p, equal_nan=True)  # the view is the whole profile




@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40 * 24), st.integers(0, 40), st.floats(0, 1e4), st.booleans()),
                min_size=0, max_size=40))
def test_a_profile_copy_equals_the_original_and_shares_nothing_that_folding_changes(
        events: list[tuple[int, int, float, bool]]) -> None:
    p = new_profile()
    for i, (hour, card, amount, fraud) in enumerate(sorted(events)):
        observe(p, tx(i, T0 + hour * HOUR_MS, card=f"c{card}", amount=amount))
        learn_label(p, T0 + hour * HOUR_MS, T0 + (hour + 30) * HOUR_MS, fraud)
        add_compromise_evidence(p, T0 + hour * HOUR_MS)
    before = as_dict(p)
    copied = copy_profile(p)
    assert as_dict(copied) == before
    for i in range(30):  # what an HTTP preview does to its copies (same hours: buckets change in place)
        observe(copied, tx(1000 + i, T0 + 40 * 24 * HOUR_MS - i * 1000, card=f"new{i}", amount=5.0))
        learn_label(copied, T0, T0 + 41 * 24 * HOUR_MS, True)
        add_compromise_evidence(copied, T0 + 41 * 24 * HOUR_MS)
    assert as_dict(p) == before

def _by_definition(profile: np.ndarray, t: Transaction, prior: float, risk: RiskSettings) -> list[float]:
    """The features as their names define them, one window at a time, over the profile's lists (the oracle of
    the one-pass compiled code)."""
    p = as_dict(profile)
    hour, day = t.ts_ms // HOUR_MS, t.ts_ms // DAY_MS

    def total(buckets: list[list[float]], lo: int, hi: int, col: int = 1) -> float:
        return float(sum(b[col] for b in buckets if lo <= b[0] <= hi))

    def moments(buckets: list[list[float]], lo: int, hi: int) -> list[float]:
        n, s, ss = (total(buckets, lo, hi, col) for col in (1, 2, 3))
        return [0.0, 0.0, 0.0] if n == 0 else [n, s / n, math.sqrt(max(0.0, ss / n - (s / n) * (s / n)))]

    shares = [(total(p["fraud_by_tx_day"], day - w, day - risk.maturity_days) + risk.prior_weight * prior)
              / (total(p["days"], day - w, day - risk.maturity_days) + risk.prior_weight) for w in (7, 30)]
    compromise = [total(p["compromise"], day - d + 1, day) for d in (1, 7, 30)]
    age = 0.0 if p["first_ts"] is None else min(30.0, max(0.0, (t.ts_ms - p["first_ts"]) / DAY_MS))
    return [*moments(p["hours"], hour, hour), *moments(p["hours"], hour - 23, hour),
            *moments(p["days"], day - 6, day), *moments(p["days"], day - 29, day),
            p["distinct"], age, float(min(p["n"], 1000)),
            *(total(p["fraud_arrived"], day - d + 1, day) for d in (1, 7, 30)), *shares, *compromise,
            compromise[-1] / max(p["distinct"], 1.0)]


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60 * 24), st.integers(0, 40), st.floats(0, 1e4),
                          st.booleans(), st.integers(0, 20 * 24), st.integers(-72, 72)), min_size=1, max_size=80),
       st.sampled_from([0, 3, 7, 40]))
def test_one_pass_features_equal_the_windows_definitions(events: list[tuple[int, int, float, bool, int, int]],
                                                         maturity: int) -> None:
    risk = RiskSettings(maturity_days=maturity)
    p = new_profile()
    for i, (hour, card, amount, fraud, delay_h, query_h) in enumerate(sorted(events)):
        t = tx(i, T0 + hour * HOUR_MS, card=f"c{card}", amount=amount)
        query = tx(i, t.ts_ms + query_h * HOUR_MS)  # before, at and after the profile's newest event
        assert features(p, query, 0.01, risk) == pytest.approx(_by_definition(p, query, 0.01, risk), rel=1e-12)
        observe(p, t)
        learn_label(p, t.ts_ms, t.ts_ms + delay_h * HOUR_MS, fraud)
        if fraud:
            add_compromise_evidence(p, t.ts_ms + delay_h * HOUR_MS, 0.5)
