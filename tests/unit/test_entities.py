"""The entity table and the label-arrival replay: what a label changes, and never before it arrived."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.domain.entities import (
    MODEL_FEATURES,
    EntityTable,
    LabelArrival,
    featurize_model,
    with_suspects,
)
from stream_app.domain.events import Transaction
from stream_app.domain.features import DAY_MS, FEATURE_NAMES, HOUR_MS, CardState, featurize
from stream_app.domain.profiles import as_dict
from stream_app.offline.replay import replay

T0 = 1_767_225_600_000
H = 7 * DAY_MS
PAD = [0.0] * len(FEATURE_NAMES)  # the card part, when only the table is under test


def tx(i: int, ts: int, card: str, merchant: str, amount: float = 20.0) -> Transaction:
    return Transaction(f"t{i}", card, merchant, amount, "EUR", ts, "FR", "pos", "5411")


def named(row: list[float]) -> dict[str, float]:
    return dict(zip(MODEL_FEATURES, row, strict=True))


def fraud(t: Transaction, arrived: int, suspects: tuple[str, ...] = ()) -> LabelArrival:
    return LabelArrival(t.card_id, t.ts_ms, arrived, True, {"merchant": t.merchant_id}, suspects)


def test_a_fraud_label_raises_its_merchant_and_card_risk_from_its_arrival_on() -> None:
    table = EntityTable()
    paid = tx(1, T0, "c1", "m1")
    table.observe(table.observation(paid))
    table.learn(fraud(paid, T0 + 2 * HOUR_MS))
    before = named(PAD + table.features(tx(2, T0 + HOUR_MS, "c1", "m1")))
    after = named(PAD + table.features(tx(3, T0 + 3 * HOUR_MS, "c1", "m1")))
    assert before["card_fraud_labels_30d"] == 0 and after["card_fraud_labels_30d"] == 1
    assert after["card_days_since_fraud_label"] == 1 / 24 and before["card_days_since_fraud_label"] == 365.0
    assert after["merchant_fraud_labels_1d"] == 1 and after["merchant_fraud_labels_30d"] == 1
    other = named(PAD + table.features(tx(4, T0 + 3 * HOUR_MS, "c2", "m2")))
    assert other["merchant_fraud_labels_30d"] == 0 and other["card_fraud_labels_30d"] == 0


def test_legit_labels_change_nothing() -> None:
    table = EntityTable()
    paid = tx(1, T0, "c1", "m1")
    table.observe(table.observation(paid))
    probe = tx(2, T0 + HOUR_MS, "c2", "m1")
    first = table.features(probe)
    table.learn(LabelArrival("c1", T0, T0 + 1, False, {"merchant": "m1"}))
    assert table.features(probe) == first and table.n_fraud_labels == 0


def test_compromise_evidence_goes_to_the_cards_earlier_merchants_once() -> None:
    table = EntityTable()
    states: dict[str, CardState] = {}
    for i, merchant in enumerate(["m_skim", "m_a"]):
        featurize_model(states, table, tx(i, T0 + i * HOUR_MS, "c1", merchant), H)
    stolen = tx(9, T0 + 5 * DAY_MS, "c1", "m_far")
    featurize_model(states, table, stolen, H)
    entity = with_suspects({"card": "c1", "ts": stolen.ts_ms, "keys": {"merchant": "m_far"}}, True, states["c1"])
    assert entity is not None and sorted(entity["suspects"]) == ["m_a", "m_skim"]
    label = LabelArrival.from_dict(entity, stolen.ts_ms + DAY_MS, True)
    table.learn(label)
    table.learn(label)  # a second fraud label of the same card: no second evidence
    probe = named(PAD + table.features(tx(10, T0 + 7 * DAY_MS, "c2", "m_skim")))
    assert probe["merchant_compromise_7d"] == 1
    assert with_suspects(entity, False, states["c1"]) is entity  # a legit label names no suspects


def test_scratch_copies_leave_the_table_unchanged() -> None:
    table = EntityTable()
    table.observe(table.observation(tx(1, T0, "c1", "m1")))
    probes = [tx(2, T0 + 1, "c2", "m1"), tx(3, T0 + 2, "c3", "m1")]
    scratch = table.scratch(probes)
    for p in probes:
        scratch.observe(scratch.observation(p))
    assert as_dict(table.profiles[("merchant", "m1")])["n"] == 1
    assert as_dict(scratch.profiles[("merchant", "m1")])["n"] == 3


def test_a_checkpoint_of_list_profiles_is_upgraded_to_arrays_with_the_same_features() -> None:
    """Checkpoints written before the array layout hold profiles as lists (``as_dict``'s form): a worker restoring
    one scores as the worker that wrote it would have."""
    table = EntityTable()
    states: dict[str, CardState] = {}
    for i in range(40):
        t = tx(i, T0 + i * 3 * HOUR_MS, f"c{i % 7}", f"m{i % 3}")
        featurize_model(states, table, t, H)
        if i % 5 == 0:
            table.learn(fraud(t, t.ts_ms + DAY_MS))
    old = replace(table, profiles={k: as_dict(p) for k, p in table.profiles.items()})  # type: ignore[misc]
    upgraded = old.upgraded()
    probe = tx(99, T0 + 6 * DAY_MS, "c1", "m1")
    assert upgraded.features(probe) == table.features(probe) and upgraded.upgraded() is upgraded


def test_idle_profiles_and_old_card_risk_expire_in_event_time() -> None:
    table = EntityTable()
    old = tx(1, T0, "c1", "m_old")
    table.observe(table.observation(old))
    table.learn(fraud(old, T0 + DAY_MS))
    table.observe(table.observation(tx(2, T0 + 90 * DAY_MS, "c2", "m_new")))
    assert table.expire() == 2
    assert set(table.profiles) == {("merchant", "m_new")} and table.card_frauds == {}


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 20 * 24), st.booleans(),
                          st.integers(0, 10 * 24)), min_size=1, max_size=40))
def test_replay_never_counts_a_label_before_it_arrived(events: list[tuple[int, int, int, bool, int]]) -> None:
    """Each row's label-derived features equal those of a table given exactly the labels that had arrived
    by that transaction (at its event time or before), whatever the delays."""
    items = sorted(((tx(i, T0 + hour * HOUR_MS, f"c{card}", f"m{merchant}"), is_fraud, delay)
                    for i, (card, merchant, hour, is_fraud, delay) in enumerate(events)), key=lambda x: x[0].ts_ms)
    label_times = [t.ts_ms + delay * HOUR_MS for t, _, delay in items]
    data = replay([(t, f) for t, f, _ in items], H, label_times=label_times, progress=False)
    for row_index, (t, _, _) in enumerate(items):
        # Known: the labels of transactions scored before it (a label follows its transaction) arrived by then.
        known = [j for j in range(row_index) if label_times[j] <= t.ts_ms and items[j][1]]
        got = named(data.x[row_index].tolist())
        assert got["card_fraud_labels_30d"] == sum(items[j][0].card_id == t.card_id for j in known)
        assert got["merchant_fraud_labels_30d"] == sum(items[j][0].merchant_id == t.merchant_id for j in known)


def test_training_and_serving_compute_the_same_row() -> None:
    """The replay's rows equal the serving path's (card features, then the table's, then observe)."""
    events = [tx(i, T0 + i * 600_000, f"c{i % 3}", f"m{i % 2}", 10.0 + i) for i in range(30)]
    data = replay([(t, False) for t in events], H, progress=False)
    states: dict[str, CardState] = {}
    table = EntityTable()
    for i, t in enumerate(events):
        served = featurize(states, t, H) + table.features(t)
        table.observe(table.observation(t))
        assert [float(v) for v in data.x[i]] == [float(v) for v in np.float32(served)]


def test_the_replica_folds_other_workers_records_once_and_skips_its_own() -> None:
    import orjson

    from stream_app.kafka.security import kafka_security
    from stream_app.settings import Settings
    from stream_app.worker.entities import EntityReplica
    from stream_app.worker.metrics import Metrics

    settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "x:9"})
    replica = EntityReplica(settings, Metrics(), kafka_security(settings))

    def record(t: Transaction) -> bytes:
        return orjson.dumps({"tx_id": t.tx_id, "card_id": t.card_id, "merchant_id": t.merchant_id,
                             "event_time": "2026-01-01T00:00:00.000Z", "features": {"amount_eur": t.amount}})

    mine, theirs = tx(1, T0, "c1", "m1"), tx(2, T0, "c2", "m1")
    replica.observe_local(mine)
    replica.apply_record(0, 0, b"t1", record(mine))  # its own score record comes by: already folded
    replica.apply_record(1, 0, b"t2", record(theirs))
    replica.apply_record(1, 0, b"t2", record(theirs))  # the same offset again (a resumed checkpoint): ignored
    replica.apply_record(1, 1, b"t3", b"{not json")
    assert as_dict(replica.table.profiles[("merchant", "m1")])["n"] == 2 and replica.state.pending == set()
    assert replica.state.offsets == {0: 0, 1: 1}
    counted = {o: replica.metrics.registry.get_sample_value("stream_app_entity_records_total", {"outcome": o})
               for o in ("applied", "own", "already_applied", "unreadable")}
    assert counted == {"applied": 1, "own": 1, "already_applied": 1, "unreadable": 1}  # every record read, once
