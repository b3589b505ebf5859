"""Ingress parsing: every bad input gets a typed error with a stable reason, never another exception."""

from __future__ import annotations

import ipaddress
import json
import random
from datetime import UTC, datetime

import jsonschema
import orjson
import pytest
from hypothesis import example, given, settings
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
from stream_app.domain.schemas import load_schema

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
@given(st.dictionaries(st.sampled_from([*sorted(GOOD), "device_id", "ip", "email_hash"]), json_values, max_size=12))
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


@given(st.integers(min_value=0, max_value=32_503_679_999_999))
def test_format_ts_is_the_calendars_utc_time_with_milliseconds(ts_ms: int) -> None:
    """format_ts does the time of day by arithmetic: the calendar must agree on every instant."""
    expected = datetime.fromtimestamp(ts_ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ts_ms % 1000:03d}Z"
    assert format_ts(ts_ms) == expected


DEVICE_IDS = st.from_regex(r"[!-~]{1,128}", fullmatch=True)
EMAIL_HASHES = st.from_regex(r"[!-?A-~]{1,128}", fullmatch=True)


@given(st.none() | DEVICE_IDS, st.none() | st.ip_addresses(), st.none() | EMAIL_HASHES)
def test_optional_ids_round_trip(device_id: str | None, ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
                                 email_hash: str | None) -> None:
    given_ids = {"device_id": device_id, "ip": None if ip is None else ip.exploded, "email_hash": email_hash}
    tx = parse_transaction(orjson.dumps({**GOOD, **{k: v for k, v in given_ids.items() if v is not None}}))
    assert (tx.device_id, tx.email_hash) == (device_id, email_hash)
    if ip is None:
        assert tx.ip is None
    else:  # the compressed form; an IPv4-mapped IPv6 address becomes its IPv4 address
        assert tx.ip is not None and ipaddress.ip_address(tx.ip) in (ip, getattr(ip, "ipv4_mapped", None))
        assert tx.ip == str(ipaddress.ip_address(tx.ip))
    assert parse_transaction(tx.to_bytes()) == tx
    assert parse_transaction(orjson.dumps({**GOOD, **given_ids, "ip": tx.ip})) == tx  # null is absent


def test_ip_is_kept_in_its_normalised_form() -> None:
    for written, kept in [("2001:DB8:0:0:0:0:0:0001", "2001:db8::1"), ("::ffff:192.0.2.1", "192.0.2.1"),
                          ("0000:0000:0000:0000:0000:ffff:255.255.255.255", "255.255.255.255"),
                          ("192.0.2.1", "192.0.2.1")]:
        assert parse_transaction(orjson.dumps({**GOOD, "ip": written})).ip == kept


def test_without_optional_ids_the_bytes_are_those_of_before() -> None:
    """Captured events, digests and re-keyed copies of events without the ids must not change."""
    tx = Transaction("tx-1", "card_abc", "m_00001", 12.5, "EUR", 1767261600000, "FR", "pos", "5411")
    assert (tx.device_id, tx.ip, tx.email_hash) == (None, None, None)
    assert tx.to_bytes() == (b'{"tx_id":"tx-1","card_id":"card_abc","merchant_id":"m_00001","amount":12.5,'
                             b'"currency":"EUR","timestamp":"2026-01-01T10:00:00.000Z","country":"FR",'
                             b'"channel":"pos","mcc":"5411"}')
    assert parse_transaction(orjson.dumps({**GOOD, "device_id": None, "ip": None, "email_hash": None})) == tx


def test_optional_ids_stay_out_of_the_repr() -> None:
    """A logged Transaction must not carry personal data."""
    tx = parse_transaction(orjson.dumps({**GOOD, "device_id": "dev-7f3a", "ip": "192.0.2.77",
                                         "email_hash": "e3b0c44298fc1c14"}))
    assert (tx.device_id, tx.ip, tx.email_hash) == ("dev-7f3a", "192.0.2.77", "e3b0c44298fc1c14")
    assert not [v for v in ("dev-7f3a", "192.0.2.77", "e3b0c44298fc1c14") if v in repr(tx)]


@pytest.mark.parametrize(("field", "value", "reason"), [
    ("ip", "300.1.2.3", "invalid_value"),
    ("ip", "192.0.2", "invalid_value"),
    ("ip", "01.2.3.4", "invalid_value"),  # a leading zero: octal to some parsers, refused
    ("ip", "fe80::1%eth0", "invalid_value"),
    ("ip", " 192.0.2.1", "invalid_value"),
    ("ip", "", "invalid_value"),
    ("ip", 3221225985, "wrong_type"),
    ("device_id", "d" * 129, "invalid_value"),
    ("device_id", "", "invalid_value"),
    ("device_id", "dev 1", "invalid_value"),
    ("device_id", "dev-1\n", "invalid_value"),
    ("device_id", "appareil-é", "invalid_value"),
    ("device_id", 42, "wrong_type"),
    ("email_hash", "h" * 129, "invalid_value"),
    ("email_hash", "jane@example.com", "invalid_value"),
    ("email_hash", ["e3b0"], "wrong_type"),
])
def test_bad_optional_ids_have_reasons(field: str, value: object, reason: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_transaction(orjson.dumps({**GOOD, field: value}))
    assert (info.value.reason, info.value.field) == (reason, field)
    if isinstance(value, str) and value.strip():  # personal data is not quoted in the DLQ or the HTTP answer
        assert value.strip() not in info.value.detail


def test_the_longest_ids_are_accepted() -> None:
    tx = parse_transaction(orjson.dumps({**GOOD, "device_id": "d" * 128, "email_hash": "h" * 128}))
    assert (tx.device_id, tx.email_hash) == ("d" * 128, "h" * 128)


TX_SCHEMA = jsonschema.Draft202012Validator(load_schema("transaction"), format_checker=jsonschema.FormatChecker())
INT64 = st.integers(-(2**63), 2**63 - 1)  # what orjson can write
ascii_text = st.text(st.characters(min_codepoint=0, max_codepoint=0x7F))
id_values = (st.none() | DEVICE_IDS | EMAIL_HASHES | st.text(max_size=140) | ascii_text
             | st.text(st.sampled_from("ab@ \n"), max_size=6) | st.integers(125, 131).map("h".__mul__)
             | INT64 | st.booleans() | st.lists(st.text(max_size=3), max_size=2))
ip_values = (st.none() | st.ip_addresses().map(str) | st.ip_addresses().map(lambda a: a.exploded)
             | st.ip_addresses(v=6).map(lambda a: f"{a}%eth0") | st.text(st.sampled_from("0123456789abcdefABCDEF:.%"))
             | ascii_text | INT64 | st.booleans())


@settings(max_examples=500, deadline=None)
@given(st.fixed_dictionaries({}, optional={"device_id": id_values, "ip": ip_values, "email_hash": id_values}))
@example({"device_id": "dev-1\n", "email_hash": "h" * 128})  # Python's `$` matches before a final newline
@example({"device_id": "d" * 129})
@example({"email_hash": "a@b"})
@example({"ip": "fe80::1%eth0"})
@example({"device_id": None, "ip": "0000:0000:0000:0000:0000:ffff:255.255.255.255"})
def test_the_schema_accepts_exactly_the_optional_ids_the_parser_accepts(ids: dict[str, object]) -> None:
    """With formats asserted (``ipv4`` / ``ipv6``), as a producer validating against the schema would."""
    body = {**GOOD, **ids}
    valid = TX_SCHEMA.is_valid(body)
    try:
        parse_transaction(orjson.dumps(body))
    except InvalidEvent as exc:
        assert not valid and exc.reason in ("wrong_type", "invalid_value") and exc.field in ids
    else:
        assert valid


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
