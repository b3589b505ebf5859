"""The delivery protocol as a state machine, without a broker: a worker crashes at each step of a
micro-batch, another one takes over and redelivery runs; every event must end with exactly one score
record and no second alert. Uses the real ingress, ledger, stored-state format and repair plan; the
"broker" is three dicts (the card table's changelog, the scores and the alerts topics)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from stream_app.domain.events import Transaction
from stream_app.domain.features import DAY_MS, CardState, featurize
from stream_app.domain.ingress import Ingress
from stream_app.domain.pan import PanTokenizer
from stream_app.domain.records import Source
from stream_app.worker import delivery
from stream_app.worker.delivery import LEDGER_MAX_AGE_MS, Ledger, StateFormatError, decode_card, encode_card

NOW = 1_767_225_600_000
INGRESS = Ingress(10_000, 7 * DAY_MS, PanTokenizer(b"k" * 32), "transactions", 4)


def _raw(i: int, card: str = "c1", amount: float = 10.0) -> bytes:
    return orjson.dumps({"tx_id": f"t{i}", "card_id": card, "merchant_id": "m1", "amount": amount, "currency": "EUR",
                         "timestamp": f"2026-01-01T10:{i:02d}:00Z", "country": "FR", "channel": "pos", "mcc": "5411"})


def _alert_due(tx: Transaction) -> bool:
    """Stands for the scorer's decision: large amounts alert."""
    return tx.amount >= 500


@dataclass
class Broker:
    cards: dict[str, bytes] = field(default_factory=dict)  # the table's changelog, latest value per key
    scores: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # tx_id -> records
    alerts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # card -> records

    def score(self, tx: Transaction) -> None:
        decision = "decline" if _alert_due(tx) else "approve"
        self.scores.setdefault(tx.tx_id, []).append({"tx_id": tx.tx_id, "decision": decision})

    def alert(self, tx: Transaction) -> None:
        self.alerts.setdefault(tx.card_id, []).append({"tx_id": tx.tx_id})


STEPS = ("scored", "state_written", "scores_written", "outputs_written", "acknowledged")


def run_batch(ledger: Ledger, broker: Broker, raws: list[bytes], crash_after: str | None = None) -> list[str]:
    """One micro-batch through the protocol's steps as the score agent takes them; returns the outcome
    kind of each event. ``crash_after``: the step after which the worker dies (nothing later happens)."""
    seq = ledger.open()
    states: dict[str, CardState] = {}
    entries: dict[str, delivery.LedgerEntry | None] = {}

    def load(card_id: str) -> CardState | None:
        stored = broker.cards.get(card_id)
        if stored is None:
            return None
        card, entries[card_id] = decode_card(stored)
        return card

    txs, rows, sources, kinds = [], [], [], []
    for offset, raw in enumerate(raws):
        out = INGRESS(raw, None, "transactions.by-card", states, load, partition=None)
        kinds.append(out.kind)
        assert out.tx is not None
        if out.kind == "scored":
            assert out.row is not None
            txs.append(out.tx)
            rows.append(out.row)
            sources.append(Source("transactions.by-card", 0, offset, NOW))
        elif out.kind == "duplicate":
            ledger.recheck(out.tx, entries.get(out.tx.card_id))
    entries.update(ledger.remember(entries, txs, rows, sources, seq))
    if crash_after == "scored":
        return kinds
    broker.cards.update({card: encode_card(state, entries.get(card)) for card, state in states.items()})
    if ledger.repairs:  # the repair reads the output topics back, then publishes what is missing
        items, _ = ledger.take_repairs()
        found_scores = {r.tx.tx_id.encode(): [orjson.dumps(x) for x in broker.scores.get(r.tx.tx_id, [])]
                        for r in items}
        alerted = {a["tx_id"] for r in items for a in broker.alerts.get(r.tx.card_id, [])}
        for step in delivery.plan_repair(items, [_alert_due(r.tx) for r in items], found_scores, alerted):
            (broker.score if step.kind == "score" else broker.alert)(items[step.index].tx)
    if crash_after == "state_written":
        return kinds
    for tx in txs:
        broker.score(tx)
    if crash_after == "scores_written":
        return kinds
    for tx in txs:
        if _alert_due(tx):
            broker.alert(tx)
    if crash_after == "outputs_written":
        return kinds
    ledger.close(seq)
    return kinds


def _clock(t: list[int]) -> Any:
    return lambda: t[0]


@pytest.mark.parametrize("crash_after", STEPS)
def test_a_crash_at_any_step_ends_with_one_score_and_one_alert_per_event(crash_after: str) -> None:
    raws = [_raw(1), _raw(2, amount=900.0), _raw(3, card="c2", amount=700.0), _raw(4, card="c2")]
    t = [NOW]
    broker = Broker()
    first = run_batch(Ledger(now_ms=_clock(t), seq=100), broker, raws, crash_after)
    assert first == ["scored"] * 4
    t[0] += 20_000  # the takeover: another worker, later; it gets the whole batch again
    second = run_batch(Ledger(now_ms=_clock(t), seq=10_000), broker, raws)
    stored = crash_after != "scored"
    assert second == (["duplicate"] * 4 if stored else ["scored"] * 4)
    assert {tx_id: len(v) for tx_id, v in broker.scores.items()} == {"t1": 1, "t2": 1, "t3": 1, "t4": 1}
    assert sorted(a["tx_id"] for v in broker.alerts.values() for a in v) == ["t2", "t3"]


def test_a_confirmed_batch_is_forgotten_at_the_cards_next_write() -> None:
    t = [NOW]
    ledger, broker = Ledger(now_ms=_clock(t), seq=100), Broker()
    run_batch(ledger, broker, [_raw(1)])
    _, entry = decode_card(broker.cards["c1"])
    assert entry is not None and set(entry["tx"]) == {"t1"}  # written with the state, before the outputs
    run_batch(ledger, broker, [_raw(2)])
    _, entry = decode_card(broker.cards["c1"])
    assert entry is not None and set(entry["tx"]) == {"t2"}  # t1's batch was closed: its entry went


def test_an_open_batch_stays_in_the_ledger_while_a_later_one_is_written() -> None:
    t = [NOW]
    ledger, broker = Ledger(now_ms=_clock(t), seq=100), Broker()
    run_batch(ledger, broker, [_raw(1)], crash_after="outputs_written")  # in flight: not acknowledged yet
    run_batch(ledger, broker, [_raw(2)])
    _, entry = decode_card(broker.cards["c1"])
    assert entry is not None and set(entry["tx"]) == {"t1", "t2"}


def test_a_previous_owners_entries_stay_until_their_redelivery_can_no_longer_come() -> None:
    t = [NOW]
    broker = Broker()
    run_batch(Ledger(now_ms=_clock(t), seq=100), broker, [_raw(1)], crash_after="state_written")
    successor = Ledger(now_ms=_clock(t), seq=10_000)
    run_batch(successor, broker, [_raw(2)])  # the card's next event overtakes t1's redelivery
    assert set(decode_card(broker.cards["c1"])[1]["tx"]) == {"t1", "t2"}  # type: ignore[index]
    t[0] += LEDGER_MAX_AGE_MS + 1
    run_batch(successor, broker, [_raw(3)])
    assert set(decode_card(broker.cards["c1"])[1]["tx"]) == {"t3"}  # type: ignore[index]


def test_an_old_ledger_entry_is_a_plain_duplicate() -> None:
    t = [NOW]
    broker = Broker()
    run_batch(Ledger(now_ms=_clock(t), seq=100), broker, [_raw(1)], crash_after="state_written")
    t[0] += LEDGER_MAX_AGE_MS + 1
    successor = Ledger(now_ms=_clock(t), seq=10_000)
    assert run_batch(successor, broker, [_raw(1)]) == ["duplicate"]
    assert broker.scores == {}  # too old to repair: long confirmed, or lost to an earlier takeover's repair
    assert successor.repairs == []


def test_outputs_are_read_back_from_before_the_event_not_the_cards_latest_write() -> None:
    """The card's entry is rewritten by its later events (the repaired one's entry kept): reading back only
    from that later write missed the first owner's score, which was then published twice (chaos run)."""
    t = [NOW]
    broker = Broker()
    run_batch(Ledger(now_ms=_clock(t), seq=100), broker, [_raw(1)], crash_after="outputs_written")
    t[0] += 30_000
    successor = Ledger(now_ms=_clock(t), seq=10_000)
    run_batch(successor, broker, [_raw(2)])  # t2 overtakes t1's redelivery: the entry is written at NOW + 30 s
    assert decode_card(broker.cards["c1"])[1]["at"] == NOW + 30_000  # type: ignore[index]
    assert run_batch(successor, broker, [_raw(1)], crash_after="scored") == ["duplicate"]
    _, since = successor.take_repairs()
    assert since <= NOW - delivery.REPAIR_MARGIN_MS  # the first score was written at NOW


def test_a_witnessed_score_decides_the_alert_not_the_rescoring() -> None:
    tx = Transaction("t9", "c9", "m1", 10.0, "EUR", NOW, "FR", "pos", "5411")
    item = delivery.Repair(tx, [0.0], Source("transactions", 0, 1, NOW))
    witnessed = {b"t9": [orjson.dumps({"tx_id": "t9", "decision": "review"})]}
    assert delivery.plan_repair([item], [False], witnessed, set()) == [delivery.Republish("alert", "t9", "c9", 0)]
    assert delivery.plan_repair([item], [True], witnessed, {"t9"}) == []
    assert delivery.plan_repair([item], [False], {}, set()) == [delivery.Republish("score", "t9", "c9", 0)]


def test_the_stored_format_is_versioned() -> None:
    states: dict[str, CardState] = {}
    for i, merchant in enumerate(["m1", "m2", "m1"]):
        featurize(states, Transaction(f"t{i}", "c1", merchant, 5.0 + i, "EUR", NOW + i, "FR", "pos", "5411"), DAY_MS)
    state = states["c1"]
    entry = {"at": NOW, "tx": {"t1": [[1.0], ["transactions", 0, 3, NOW], 7]}}
    stored = encode_card(state, entry)
    assert stored[:2] == b"C\x03" and stored.endswith(orjson.dumps(entry))
    assert decode_card(stored) == (state, entry)
    assert decode_card(encode_card(state, None)) == (state, None)
    assert decode_card(encode_card(CardState(), None)) == (CardState(), None)
    lists = state.as_dict()
    assert decode_card(orjson.dumps({"v": 2, "card": lists, "ledger": entry})) == (state, entry)
    assert decode_card(orjson.dumps({**lists, "unconfirmed": entry})) == (state, entry)  # v1
    assert decode_card(orjson.dumps(lists)) == (state, None)
    with pytest.raises(StateFormatError, match="v4"):
        decode_card(b"C\x04" + stored[2:])
    with pytest.raises(StateFormatError, match="v7"):
        decode_card(orjson.dumps({"v": 7, "card": lists}))


def test_a_repair_gets_the_features_the_event_was_scored_from() -> None:
    """The stored entry (format v3: with the card's array) gives a repair the exact floats the event was scored from."""
    states: dict[str, CardState] = {}
    entries: dict[str, delivery.LedgerEntry | None] = {}
    out = INGRESS(_raw(1, amount=123.456), None, "transactions.by-card", states, lambda _: None, partition=None)
    assert out.tx is not None and out.row is not None
    ledger = Ledger(now_ms=lambda: NOW, seq=100)
    entries.update(ledger.remember(entries, [out.tx], [out.row], [Source("transactions.by-card", 0, 7, NOW)],
                                   ledger.open()))
    _, entry = decode_card(encode_card(states["c1"], entries["c1"]))
    later = Ledger(now_ms=lambda: NOW + 1_000, seq=10_000)
    assert later.recheck(out.tx, entry) and not later.recheck(out.tx, entry)  # queued once
    repairs, _ = later.take_repairs()
    assert [r.features for r in repairs] == [out.row] and repairs[0].source.offset == 7
