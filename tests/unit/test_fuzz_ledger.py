"""The end-to-end fuzzer's ledger: how it matches what a worker wrote to the messages sent, and what it
calls lost or unexpected (the run itself: tests/integration/test_fuzz_e2e.py)."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from stream_app.devtools import fuzz
from stream_app.devtools.fuzz import Message
from stream_app.devtools.fuzz_e2e import (
    Collected,
    Ledger,
    Names,
    card_number_leaks,
    fuzz_messages,
    schema_violations,
    size_ladder,
)
from stream_app.domain.learning import ParkedLabel
from stream_app.domain.pan import PanTokenizer

NAMES = Names("t", "t.rk", "t.dlq", "s", "a", "l", "l.rk", "l.dlq", "ex")
PANS = PanTokenizer(fuzz.FUZZ_KEY)


def _tx(tx_id: str, card: str = "card_0001", ts: str = "2026-01-01T10:00:00Z") -> bytes:
    return orjson.dumps({"tx_id": tx_id, "card_id": card, "merchant_id": "m_1", "amount": 10.0, "currency": "EUR",
                         "timestamp": ts, "country": "FR", "channel": "pos", "mcc": "5411"})


def _label(tx_id: str, card: str = "card_0001") -> bytes:
    return orjson.dumps({"tx_id": tx_id, "card_id": card, "label": "fraud", "source": "analyst",
                         "label_time": "2026-01-02T10:00:00Z"})


def _sent(ledger: Ledger, kind: str, value: bytes | None, key: bytes | None, partition: int, offset: int) -> None:
    entry = ledger.predict(kind, Message("valid", value, key), "valid")
    assert entry is not None
    entry.partition, entry.offset = partition, offset
    ledger.entries.append(entry)


def _score(tx_id: str, topic: str, partition: int, offset: int, card: str = "card_0001") -> dict[str, Any]:
    return {"tx_id": tx_id, "card_id": card, "source": {"topic": topic, "partition": partition, "offset": offset}}


def _dead_letter(reason: str, topic: str, partition: int, offset: int, original: bytes = b"") -> dict[str, Any]:
    return {"reason": reason, "source": {"topic": topic, "partition": partition, "offset": offset},
            "original_b64": base64.b64encode(original).decode()}


@pytest.fixture
def ledger() -> Ledger:
    """A, its redelivery, a bad message, B keyed by tx_id (re-keyed by the worker); then a label for A,
    its redelivery, and a label for a transaction never scored."""
    ledger = Ledger(PANS, fuzz.MAX_BYTES)
    _sent(ledger, "transactions", _tx("A"), b"card_0001", 0, 0)
    _sent(ledger, "transactions", _tx("A"), b"card_0001", 0, 1)
    _sent(ledger, "transactions", b"{not json", b"card_0001", 0, 2)
    _sent(ledger, "transactions", _tx("B", "card_0002"), b"B", 1, 0)
    ledger.expect_order("transactions")
    _sent(ledger, "labels", _label("A"), b"A", 2, 0)
    _sent(ledger, "labels", _label("A"), b"card_0001", 0, 0)
    _sent(ledger, "labels", _label("X"), b"card_0001", 0, 1)
    ledger.expect_order("labels", {("card_0001", "A"), ("card_0002", "B")})
    return ledger


def _outputs() -> Collected:
    out = Collected()
    out.parsed["s"] = [_score("A", "t", 0, 0), _score("B", "t.rk", 3, 7, "card_0002")]
    out.parsed["t.dlq"] = [_dead_letter("invalid_json", "t", 0, 2)]
    out.parsed["a"] = [{"tx_id": "A", "card_id": "card_0001"}]
    out.parsed["ex"] = [{"tx_id": "A"}]
    out.parsed["l.dlq"] = [_dead_letter("unknown_tx", "l", 0, 1)]
    return out


def test_every_message_is_matched_once(ledger: Ledger) -> None:
    ledger.account(_outputs(), NAMES)
    assert [e.actual for e in ledger.entries] == ["scored", "duplicate", "dead_lettered:invalid_json", "scored",
                                                  "joined", "duplicate", "dead_lettered:unknown_tx"]
    assert [e.expected for e in ledger.entries] == ["scored", "duplicate", "dead_lettered:invalid_json", "scored",
                                                    "joined", "duplicate", "dead_lettered:unknown_tx"]
    assert ledger.issues == [] and ledger.pending() == 0


def test_missing_outputs_are_lost(ledger: Ledger) -> None:
    out = _outputs()
    out.parsed["t.dlq"] = []
    out.parsed["s"] = out.parsed["s"][1:]  # A never scored: A and its redelivery are lost
    out.parsed["l.dlq"] = []
    ledger.account(out, NAMES)
    assert [e.actual for e in ledger.entries] == ["lost", "lost", "lost", "scored", "lost", "lost", "lost"]
    assert ledger.pending("transactions") == 3 and ledger.pending() == 6
    assert any("example(s) for tx_id=A" in issue for issue in ledger.issues)  # its example has no label group left


@pytest.mark.parametrize("change, issue", [
    (lambda o: o.parsed["s"].append(_score("A", "t", 0, 1)), "a second score"),
    (lambda o: o.parsed["s"].append(_score("B", "t.rk", 2, 9, "card_0002")), "a second score"),
    (lambda o: o.parsed["a"].append({"tx_id": "A", "card_id": "card_0001"}), "2 alert(s) for tx_id=A"),
    (lambda o: o.parsed["a"].append({"tx_id": "Z", "card_id": "card_0001"}), "scored=False"),
    (lambda o: o.parsed["ex"].append({"tx_id": "A"}), "example(s) for tx_id=A"),
    (lambda o: o.parsed["t.dlq"].__setitem__(0, _dead_letter("wrong_type", "t", 0, 2)),
     "expected dead_lettered:invalid_json"),
    (lambda o: o.parsed["t.dlq"].append(_dead_letter("late_event", "t", 0, 1)), "was dead_lettered:late_event"),
    (lambda o: o.parsed["t.dlq"].append(_dead_letter("invalid_json", "t", 3, 3)), "matches no message"),
    (lambda o: o.parsed["l.dlq"].append(_dead_letter("unknown_tx", "l", 2, 0)), "was dead_lettered:unknown_tx"),
])
def test_wrong_outputs_are_unexpected(ledger: Ledger, change: Any, issue: str) -> None:
    out = _outputs()
    change(out)
    ledger.account(out, NAMES)
    assert any(issue in i for i in ledger.issues), ledger.issues


def test_a_dead_lettered_rekeyed_event_is_matched_by_its_tx_id() -> None:
    ledger = Ledger(PANS, fuzz.MAX_BYTES)
    _sent(ledger, "transactions", _tx("A", ts="2026-03-01T00:00:00Z"), b"card_0001", 0, 0)
    _sent(ledger, "transactions", _tx("B", ts="2026-01-01T00:00:00Z"), None, 1, 0)  # a month older: may be late
    ledger.expect_order("transactions")
    out = Collected()
    out.parsed["s"] = [_score("A", "t", 0, 0)]
    out.parsed["t.dlq"] = [_dead_letter("late_event", "t.rk", 2, 0, _tx("B", ts="2026-01-01T00:00:00Z"))]
    ledger.account(out, NAMES)
    assert [e.actual for e in ledger.entries] == ["scored", "dead_lettered:late_event"] and ledger.issues == []


def test_generated_runs_hold_the_size_ladder_and_no_id_with_a_card_number() -> None:
    ledger = Ledger(PANS, fuzz.MAX_BYTES)
    made = list(fuzz_messages("transactions", fuzz.Mutator(1), 400, ledger, 1_048_588, []))
    assert len(made) == 400
    sizes = {len(m.value or b"") for m, e in made if e.what.startswith("size:") and e.what != "size:random"}
    assert sizes == set(size_ladder(fuzz.MAX_BYTES, 1_048_588))
    ledger.entries = [e for _, e in made]
    ledger.expect_order("transactions")
    assert {e.expected.split(":")[0] for e in ledger.entries} == {"scored", "duplicate", "dead_lettered"}
    assert {m.key for m, _ in made} >= {None, b""} and any(m.value is None for m, _ in made)
    assert all(PANS.mask(e.group[1].encode()) == e.group[1].encode() for e in ledger.entries if e.group)


def test_leak_scan_reads_keys_headers_and_dead_letter_originals() -> None:
    out = Collected()
    spaced = fuzz.spellings(fuzz.PANS[1])[1].encode()
    out.records["x.dlq"] = [(0, 0, None, orjson.dumps({"original_b64": base64.b64encode(b"card " + spaced).decode()}),
                             [])]
    out.records["x.scores"] = [(1, 5, None, b"{}", [("h", fuzz.PANS[2].encode())]),
                               (1, 6, b"tok_" + fuzz.PANS[0].encode() + b"0", b"{}", [])]  # glued: a longer number
    out.records["x-parked-labels-changelog"] = [
        (2, 0, b"k", ParkedLabel(b"card " + fuzz.PANS[3].encode(), "l", 0, 1, None, 0).to_bytes(), [])]
    assert card_number_leaks(out) == ["x.dlq 0/0", "x.scores 1/5", "x-parked-labels-changelog 2/0"]


def test_records_are_checked_against_their_schemas() -> None:
    out = _outputs()
    out.parsed["ex"] = [{"tx_id": "A", "features": [1.0, None]}, {"tx_id": "B", "features": [1.0, 2]}]
    found = schema_violations(out, NAMES)
    assert any(f.startswith("s: tx_id=A") for f in found)  # the fixture's score records lack most fields
    assert any(f.startswith("t.dlq: ") for f in found) and any(f.startswith("a: tx_id=A") for f in found)
    assert [f for f in found if f.startswith("ex:")] == ["ex: tx_id=A features [1.0, None]"]


def test_a_rekeyed_event_the_worker_then_refuses_is_unexpected_not_lost() -> None:
    """An event valid as sent and refused after the worker re-encoded it for the re-key topic (seen once:
    a year before 1000 written back unpadded) is matched by its card and tx_id, and reported."""
    ledger = Ledger(PANS, fuzz.MAX_BYTES)
    _sent(ledger, "labels", _label("A", fuzz.PANS[0]), b"A", 2, 0)
    ledger.expect_order("labels", set())
    reencoded = _label("A", str(PANS.token(fuzz.PANS[0]))).replace(b"2026-01-02T10:00:00Z", b"1-01-02T10:00:00.000Z")
    out = Collected()
    out.parsed["l.dlq"] = [_dead_letter("invalid_value", "l.rk", 1, 4, reencoded)]
    ledger.account(out, NAMES)
    assert [e.actual for e in ledger.entries] == ["dead_lettered:invalid_value"]
    assert any("was dead_lettered:invalid_value, expected dead_lettered:unknown_tx" in i for i in ledger.issues)
