"""`stream-app tail`'s lines and filters: what each kind of record looks like, that any message (hostile
bytes, records of any shape) gives one printable line and one parseable JSON line, that no card number
is ever printed, and how filters combine."""

from __future__ import annotations

import base64
import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.cli import build_parser
from stream_app.domain.pan import PanTokenizer, luhn_ok
from stream_app.domain.tail import Filters, Message, View, card_filter, cards, decode, escape, json_line, line

PANS = PanTokenizer(b"test-pan-key-0123456789abcdef")
NO_KEY = PanTokenizer()
VISA = "4111111111111111"
TS = 1_796_000_000_000  # 2026-11-30T00:53:20Z
ALERT = {"alert_id": "tx-7", "tx_id": "tx-7", "card_id": "card_5e0c", "merchant_id": "m_12", "amount": 912.444,
         "currency": "EUR", "country": "ES", "event_time": "2026-11-30T01:00:00.000Z", "decision": "decline",
         "risk_score": 0.9712, "scores": {"onnx": 0.97, "river": 0.5}, "model_versions": {},
         "reasons": [{"feature": "amount_to_mean_30d", "value": 14.2, "push": 2.1, "text": "-"},
                     {"feature": "country_changed", "value": 1.0, "push": 1.0, "text": "-"}],
         "alerted_at": "2026-11-30T01:00:00.100Z"}
SCORE = {"tx_id": "tx-8", "card_id": "card_77", "merchant_id": "m_3", "event_time": "-", "decision": "approve",
         "risk_score": 0.01, "scores": {}, "model_versions": {}, "policy": "weighted", "features": {},
         "source": {"topic": "transactions", "partition": 1, "offset": 5}, "timing": {"latency_ms": 12}}


def dead_letter(original: bytes, reason: str = "invalid_json", **extra: Any) -> dict[str, Any]:
    return {"reason": reason, "detail": "Unexpected character", "field": None,
            "source": {"topic": "transactions", "partition": 2, "offset": 41}, "key_b64": None, "key_size": None,
            "original_b64": base64.b64encode(original).decode(), "original_size": len(original),
            "original_sha256": "0" * 64, "original_truncated": False, "dead_lettered_at": "-", **extra}


def message(value: bytes | None, key: bytes | None = None, ts: int = TS) -> Message:
    return Message("t", 3, 17, ts, key, value)


def view(record: Any, key: bytes | None = None, pans: PanTokenizer = PANS) -> View:
    return decode(message(orjson.dumps(record), key), pans)


def test_alert_line_says_decision_risk_ids_money_and_reasons() -> None:
    assert line(view(ALERT)) == (
        "2026-11-30T00:53:20.000Z ALERT       decline risk=0.97 tx=tx-7 card=card_5e0c merchant=m_12 912.44 EUR ES "
        "| amount_to_mean_30d=14.2, country_changed=1")


def test_score_line_has_its_latency_and_no_money() -> None:
    assert line(view(SCORE)) == (
        "2026-11-30T00:53:20.000Z SCORE       approve risk=0.01 tx=tx-8 card=card_77 merchant=m_3 latency_ms=12")


def test_dead_letter_line_shows_reason_source_and_an_escaped_masked_preview() -> None:
    hostile = b'\x1b]0;owned\x07\xe2\x80\xae\xff card ' + VISA.encode()
    out = line(view(dead_letter(hostile)))
    assert out.startswith("2026-11-30T00:53:20.000Z DEAD-LETTER invalid_json       from transactions@2:41 ")
    assert "| Unexpected character |" in out
    assert VISA not in out and PANS.token(VISA) in out
    assert out.endswith(f"| \\x1b]0;owned\\x07\\u202e\\xff card {PANS.token(VISA)}")  # ESC BEL RLO, bad UTF-8
    assert line(view(dead_letter(b"x", original_b64="%%%"))).endswith("| (not base64)")


def test_label_example_transaction_json_and_raw_lines() -> None:
    label = {"tx_id": "tx-1", "card_id": "c1", "label": "fraud", "source": "chargeback", "label_time": "-"}
    assert line(view(label)).endswith("LABEL       fraud   tx=tx-1 card=c1 source=chargeback")
    example = {"tx_id": "tx-1", "features": [0.5], "label": 1, "scores": {"onnx": 0.912, "river": 0.1}}
    assert line(view(example)).endswith("EXAMPLE     label=1 tx=tx-1 onnx=0.91 river=0.10")
    tx = {"tx_id": "tx-2", "card_id": VISA, "merchant_id": "m", "amount": 3, "currency": "USD", "country": "US",
          "channel": "ecom", "mcc": "5411"}
    assert line(view(tx, pans=NO_KEY)).endswith(
        "TRANSACTION tx=tx-2 card=************1111 merchant=m 3.00 USD US channel=ecom mcc=5411")
    assert line(view([1, "a\nb"])).endswith('JSON        [1,"a\\nb"]')
    assert line(decode(message(b"\x1b[2Jhi\xff", ts=-1), PANS)) == f"{'-' * 24} RAW         7 B \\x1b[2Jhi\\xff"
    assert decode(message(None), PANS).kind == "raw"  # a tombstone


def test_deeply_nested_json_is_shown_as_text_not_a_crash() -> None:
    for depth in (500, 5000):  # masking and printing recurse: a few hundred levels once exhausted the stack
        v = decode(message(b"[" * depth + b"1" + b"]" * depth), PANS)
        assert (v.kind, v.record) == ("raw", None) and line(v).endswith(" B " + "[" * 79 + "…")
        assert json.loads(json_line(v))["value"].startswith("[[[")
    assert view([[[1]]]).kind == "json"


def test_escape_cuts_long_values() -> None:
    assert escape("a\tb\u2028") == "a\\tb\\u2028"
    assert escape("x" * 100, 10) == "x" * 9 + "…"


def test_json_line_has_the_position_key_and_masked_record() -> None:
    out = json.loads(json_line(view({**ALERT, "card_id": VISA}, key=VISA.encode())))
    token = PANS.token(VISA)
    assert out == {"topic": "t", "partition": 3, "offset": 17, "timestamp": "2026-11-30T00:53:20.000Z",
                   "key": token, "record": {**ALERT, "card_id": token}}
    assert json.loads(json_line(decode(message(b"\xffnot json\x7f"), PANS))) == {
        "topic": "t", "partition": 3, "offset": 17, "timestamp": "2026-11-30T00:53:20.000Z", "key": None,
        "value": "\\xffnot json\x7f"}


def test_filters_combine_with_and_and_alternatives_with_or() -> None:
    alert, score = view(ALERT), view(SCORE)
    assert Filters(decisions=frozenset({"decline"})).match(alert)
    assert not Filters(decisions=frozenset({"decline"})).match(score)
    assert Filters(decisions=frozenset({"review", "approve"})).match(score)
    assert Filters(reasons=frozenset({"COUNTRY_CHANGED"})).match(alert)
    assert not Filters(reasons=frozenset({"invalid_json"})).match(alert)
    both = Filters(decisions=frozenset({"decline"}), cards=frozenset({"card_5e0c"}))
    assert both.match(alert) and not both.match(view({**ALERT, "card_id": "other"}))
    dlq = view(dead_letter(b'{"card_id": "' + VISA.encode() + b'"}', reason="missing_field"))
    assert Filters(reasons=frozenset({"missing_field"}), cards=frozenset({PANS.token(VISA)})).match(dlq)
    assert not Filters(decisions=frozenset({"decline"})).match(dlq)
    assert cards(view(dead_letter(b"not json"), key=b"card_9")) == {"card_9"}  # else its key


def test_card_filter_takes_a_token_or_a_card_number_but_never_echoes_the_number() -> None:
    assert card_filter(" card_5e0c ", PANS) == "card_5e0c"
    assert card_filter("4111 1111 1111 1111", PANS) == PANS.token(VISA)
    with pytest.raises(ValueError) as info:
        card_filter(VISA, NO_KEY)
    assert "1111" not in str(info.value) and "STREAM_APP_PAN_KEY" in str(info.value)


def test_parser_refuses_a_max_or_seconds_that_is_not_positive(capsys: pytest.CaptureFixture[str]) -> None:
    args = build_parser().parse_args(["tail", "scores", "--decision", "decline", "--decision", "review",
                                      "--max", "3", "--seconds", "0.5"])
    assert (args.decision, args.max, args.seconds, args.from_beginning) == (["decline", "review"], 3, 0.5, False)
    for bad in (["--max", "0"], ["--seconds", "-1"], ["--decision", "block"]):
        with pytest.raises(SystemExit) as info:
            build_parser().parse_args(["tail", "scores", *bad])
        assert info.value.code == 2


# ---- any message at all ---------------------------------------------------------------------------------

KNOWN = ["alert_id", "tx_id", "card_id", "merchant_id", "amount", "currency", "country", "decision", "risk_score",
         "reasons", "reason", "detail", "field", "source", "original_b64", "original_size", "label", "features",
         "scores", "timing", "channel", "mcc"]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KNOWN) | st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=12)
records = st.dictionaries(st.sampled_from(KNOWN) | st.text(max_size=6),
                          json_values | st.binary(max_size=60).map(lambda b: base64.b64encode(b).decode()),
                          max_size=12)
values = st.one_of(st.none(), st.binary(max_size=200), json_values.map(orjson.dumps), records.map(orjson.dumps))
messages = st.builds(Message, st.text(max_size=10), st.integers(0, 2**31), st.integers(0, 2**62),
                     st.integers(-2**63, 2**63), st.none() | st.binary(max_size=40), values)


def _printable_one_line(text: str) -> bool:
    return all(c.isprintable() for c in text)  # newlines, tabs, ESC, bidi overrides are not


@settings(max_examples=400, derandomize=True, deadline=None)
@given(messages, st.sampled_from([PANS, NO_KEY]))
def test_any_message_gives_one_printable_line_and_one_json_object(m: Message, pans: PanTokenizer) -> None:
    v = decode(m, pans)
    assert _printable_one_line(line(v))
    out = json_line(v)
    assert out.isascii() and _printable_one_line(out)
    parsed = json.loads(out)
    assert (parsed["topic"], parsed["partition"], parsed["offset"]) == (m.topic, m.partition, m.offset)
    assert parsed.get("record") == v.record and parsed.get("value") == v.text
    Filters(frozenset({"decline"}), frozenset({"c"}), frozenset({"r"})).match(v)  # never raises


def with_luhn(body: str) -> str:
    return body + next(d for d in "0123456789" if luhn_ok(body + d))


card_numbers = st.text("0123456789", min_size=15, max_size=15).map(lambda b: with_luhn("4" + b[:14]))
# a hostile record: a card number put in any field of any kind of record, as text, as a number, in the
# dead letter's original bytes or in the key
placements = st.sampled_from(["string", "number", "nested", "original", "key", "raw"])


@settings(max_examples=300, derandomize=True, deadline=None)
@given(card_numbers, placements, st.sampled_from([ALERT, SCORE, dead_letter(b"")]), st.sampled_from(KNOWN),
       st.sampled_from([PANS, NO_KEY]))
def test_no_card_number_is_ever_printed(pan: str, where: str, base: dict[str, Any], field: str,
                                        pans: PanTokenizer) -> None:
    record: Any = dict(base)
    key = None
    if where == "string":
        record[field] = f"x {pan}\x1b"
    elif where == "number":
        record[field] = int(pan)
    elif where == "nested":
        record[field] = [{"card": f"{pan[:4]}-{pan[4:8]}-{pan[8:12]}-{pan[12:]}"}]
    elif where == "original":
        record = dead_letter(b'{"card_id": "' + pan.encode() + b'"}')
    elif where == "key":
        key = pan.encode()
    raw = f"\x00{pan}\xff".encode() if where == "raw" else orjson.dumps(record)
    v = decode(message(raw, key), pans)
    for out in (line(v), json_line(v)):
        assert pan not in out.replace("-", "")


def test_rule_hits_are_shown_and_filterable_by_rule_id_or_reason_code() -> None:
    rules = {"version": 3, "model_decision": "approve", "decided_by": "block-m12",
             "hits": [{"id": "block-m12", "action": "decline", "mode": "enforce", "reason": "blocked_merchant"},
                      {"id": "velocity", "action": "review", "mode": "shadow", "reason": "card_velocity"}]}
    alert, score = view({**ALERT, "rules": rules}), view({**SCORE, "rules": rules, "decision": "decline"})
    assert "rules=block-m12:decline,velocity:review(shadow) | amount_to_mean_30d" in line(alert)
    assert line(score).endswith("rules=block-m12:decline,velocity:review(shadow) latency_ms=12")
    for wanted in ("block-m12", "BLOCKED_MERCHANT", "card_velocity"):
        assert Filters(reasons=frozenset({wanted})).match(alert) and Filters(reasons=frozenset({wanted})).match(score)
    assert not Filters(reasons=frozenset({"block-m12"})).match(view(SCORE))  # no rule set: no rule hits
    hostile = view({**SCORE, "rules": {"hits": [{"id": "\x1b[31mx", "action": "decline", "mode": "enforce"}]}})
    assert "\x1b" not in line(hostile) and "rules=\\x1b[31mx:decline" in line(hostile)
