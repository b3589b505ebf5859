"""Ingress parsing: every bad input gets a typed error with a stable reason, never another exception."""

from __future__ import annotations

import json
import random

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.devtools.malformed import VARIANTS
from stream_app.domain.events import (
    EUR_RATES,
    InvalidEvent,
    Transaction,
    format_ts,
    kept_json,
    parse_transaction,
    parse_ts,
)

GOOD = {
    "tx_id": "tx-1", "card_id": "card_abc", "merchant_id": "m_00001", "amount": 12.5, "currency": "EUR",
    "timestamp": "2026-01-01T10:00:00Z", "country": "FR", "channel": "pos", "mcc": "5411",
}


def test_valid_transaction_parses() -> None:
    tx = parse_transaction(orjson.dumps(GOOD))
    assert tx == Transaction("tx-1", "card_abc", "m_00001", 12.5, "EUR", 1767261600000, "FR", "pos", "5411")
    assert parse_transaction(tx.to_bytes()) == tx


@pytest.mark.parametrize(("change", "reason"), [
    ({"amount": float("nan")}, "invalid_json"),  # orjson writes NaN as null
    ({"amount": -1}, "invalid_value"),
    ({"amount": "12"}, "wrong_type"),
    ({"amount": True}, "wrong_type"),
    ({"currency": "XYZ"}, "unknown_currency"),
    ({"currency": 978}, "wrong_type"),
    ({"timestamp": "2026-01-01T10:00:00"}, "invalid_value"),
    ({"timestamp": "soon"}, "invalid_value"),
    ({"channel": "telepathy"}, "invalid_value"),
    ({"country": "France"}, "invalid_value"),
    ({"mcc": 5411}, "wrong_type"),
    ({"card_id": ""}, "invalid_value"),
    ({"tx_id": None}, "missing_field"),
])
def test_bad_fields_have_reasons(change: dict[str, object], reason: str) -> None:
    body = orjson.dumps({**GOOD, **change}) if reason != "invalid_json" else b'{"amount": NaN}'
    with pytest.raises(InvalidEvent) as info:
        parse_transaction(body)
    assert info.value.reason == reason


def test_infinite_and_huge_amounts_are_refused() -> None:
    for literal in (b"1e999", b"Infinity", b"-Infinity"):
        body = orjson.dumps(GOOD).replace(b"12.5", literal)
        with pytest.raises(InvalidEvent):
            parse_transaction(body)
    with pytest.raises(InvalidEvent) as info:
        parse_transaction(orjson.dumps({**GOOD, "amount": 2e9}))
    assert info.value.reason == "invalid_value"


@pytest.mark.parametrize("amount", [5e-324, 1e-300, 0.0009])
def test_amounts_below_the_smallest_minor_unit_are_refused(amount: float) -> None:
    """Found by the end-to-end fuzzer: a 5e-324 amount was accepted, and the card's next amount-to-mean
    ratio became infinite (written as null), which then crashed the online learner. Zero is valid
    (tests/unit/test_zero_amounts.py), the amounts between it and the smallest minor unit are not."""
    with pytest.raises(InvalidEvent) as info:
        parse_transaction(orjson.dumps({**GOOD, "amount": amount}))
    assert info.value.reason == "invalid_value"
    assert parse_transaction(orjson.dumps({**GOOD, "amount": 0.001})).amount == 0.001


@pytest.mark.parametrize("timestamp", ["0999-12-31T23:59:59Z", "1969-12-31T23:59:59Z", "3000-01-01T00:00:00Z"])
def test_timestamps_outside_the_epoch_range_are_refused_in_every_form(timestamp: str) -> None:
    """Found by the end-to-end fuzzer: year 999 parsed, but was written back unpadded by format_ts when
    the event was re-keyed, and the re-keyed copy was then refused: one range for both forms."""
    with pytest.raises(InvalidEvent) as info:
        parse_transaction(orjson.dumps({**GOOD, "timestamp": timestamp}))
    assert info.value.reason == "invalid_value"


def test_oversized_message_is_refused_before_decoding() -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_transaction(b"{" + b" " * 20000 + b"}", max_bytes=16384)
    assert info.value.reason == "message_too_large"


def test_every_malformed_variant_gets_its_reason() -> None:
    tx = parse_transaction(orjson.dumps(GOOD))
    rng = random.Random(1)
    for name, make, reason in VARIANTS:
        with pytest.raises(InvalidEvent) as info:
            parse_transaction(make(tx, rng))
        assert info.value.reason == reason, name


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_else(raw: bytes) -> None:
    try:
        parse_transaction(raw)
    except InvalidEvent as exc:
        assert exc.reason


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10,
)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(GOOD)), json_values, max_size=9))
def test_arbitrary_field_values_never_raise_anything_else(fields: dict[str, object]) -> None:
    try:
        parse_transaction(json.dumps({**GOOD, **fields}).encode())
    except InvalidEvent as exc:
        assert exc.reason


@given(
    st.integers(min_value=0, max_value=32_503_679_999_999),
    st.floats(min_value=0.01, max_value=1e6, allow_nan=False),
    st.sampled_from(sorted(EUR_RATES)),
)
def test_round_trip(ts_ms: int, amount: float, currency: str) -> None:
    tx = Transaction("t", "c", "m", amount, currency, ts_ms, "DE", "ecom", "4816")
    assert parse_transaction(tx.to_bytes()) == tx
    assert parse_ts(format_ts(ts_ms)) == ts_ms


def test_kept_json_holds_no_more_memory_than_its_bytes() -> None:
    """Table values live for days: each must cost its length, not orjson's working buffer."""
    import tracemalloc

    state = {"recent": [[1_767_225_600_000 + i, 12.5 * i] for i in range(20)], "seen": list(range(40))}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [kept_json(state) for _ in range(200)]
        per_value = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()
    assert orjson.loads(kept[0]) == state
    assert per_value < len(kept[0]) + 100
