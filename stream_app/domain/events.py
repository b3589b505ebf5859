"""Typed events and the ingress parser: bytes in, a valid ``Transaction`` or a typed error out.

Every producer's bytes pass through :func:`parse_transaction` before any state is touched, so a
malformed event becomes a dead-letter record with a reason instead of an exception in a worker.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Final

import orjson

from stream_app.domain.pan import PanTokenizer, pan_digits

#: Reference rates to EUR used to put amounts on one scale for features. They are fixed on purpose:
#: features must not depend on a live FX feed, or training and serving would drift apart.
EUR_RATES: Final[dict[str, float]] = {
    "EUR": 1.0, "USD": 0.92, "GBP": 1.17, "CHF": 1.05, "SEK": 0.088, "NOK": 0.086, "DKK": 0.134,
    "PLN": 0.23, "CZK": 0.040, "HUF": 0.0025, "JPY": 0.0061, "CNY": 0.127, "INR": 0.011,
    "BRL": 0.17, "MXN": 0.051, "CAD": 0.67, "AUD": 0.60, "NZD": 0.55, "ZAR": 0.050, "TRY": 0.027,
    "AED": 0.25, "SGD": 0.69, "HKD": 0.118, "KRW": 0.00068, "RUB": 0.0095, "NGN": 0.00058,
}
CHANNELS: Final[frozenset[str]] = frozenset({"pos", "ecom", "atm", "moto"})
MAX_AMOUNT: Final[float] = 1e9
#: The smallest positive amount: the smallest minor unit of any ISO 4217 currency (three decimals). Zero is
#: valid too (card-verification authorizations are 0.00), but nothing in between: an amount in (0, 0.001) is
#: no amount any currency can charge, and accepting it would let a denormal (5e-324) back in, whose mean
#: made a card's amount-to-mean ratio infinite. So every positive amount, and every positive mean of
#: amounts, is at least 0.001 times the smallest EUR rate.
MIN_AMOUNT: Final[float] = 0.001
MAX_TS_MS: Final[int] = 32_503_680_000_000  # year 3000
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS: Final = timedelta(milliseconds=1)

_ID_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
_COUNTRY_RE = re.compile(r"^[A-Z]{2}$")
_MCC_RE = re.compile(r"^[0-9]{4}$")
#: Optional entity ids (device, e-mail hash): printable ASCII without spaces, so they are safe as state keys.
#: ``fullmatch``, not ``$``: a trailing newline is not part of an id. The e-mail hash also refuses ``@``:
#: a hash never has one, a clear-text address always does, and must not be stored.
ENTITY_ID_MAX: Final[int] = 128
_DEVICE_RE = re.compile(f"[!-~]{{1,{ENTITY_ID_MAX}}}")
_EMAIL_HASH_RE = re.compile(f"[!-?A-~]{{1,{ENTITY_ID_MAX}}}")
_DEVICE_RULE: Final = f"1 to {ENTITY_ID_MAX} printable ASCII characters without spaces"
_EMAIL_HASH_RULE: Final = f"{_DEVICE_RULE}, and no @ (a hash, not the address)"


class InvalidEvent(ValueError):
    """An event that cannot be processed; ``reason`` is a stable code used in the DLQ and metrics."""

    reason = "invalid_event"

    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class MessageTooLarge(InvalidEvent):
    reason = "message_too_large"


class NotJson(InvalidEvent):
    reason = "invalid_json"


class NotAnObject(InvalidEvent):
    reason = "not_an_object"


class MissingField(InvalidEvent):
    reason = "missing_field"


class WrongType(InvalidEvent):
    reason = "wrong_type"


class InvalidValue(InvalidEvent):
    reason = "invalid_value"


class UnknownCurrency(InvalidEvent):
    reason = "unknown_currency"


class RawPan(InvalidEvent):
    """A card id that looks like a raw card number while no PAN key is set: never stored or scored."""

    reason = "raw_pan"


class DuplicateEvent(InvalidEvent):
    """A tx_id already scored for this card: counted, never scored or alerted twice."""

    reason = "duplicate"


class UnknownTransaction(InvalidEvent):
    """A label for a tx_id this service never scored (or whose features have expired)."""

    reason = "unknown_tx"


class LateEvent(InvalidEvent):
    """Older than the card's dedup horizon: it could be a replay that can no longer be recognised."""

    reason = "late_event"


@dataclass(frozen=True, slots=True)
class Transaction:
    tx_id: str
    card_id: str
    merchant_id: str
    amount: float
    currency: str
    ts_ms: int
    country: str
    channel: str
    mcc: str
    # Optional entity ids: personal data, so kept out of the repr (and thereby out of logs of a Transaction).
    device_id: str | None = dataclasses.field(default=None, repr=False)
    ip: str | None = dataclasses.field(default=None, repr=False)
    email_hash: str | None = dataclasses.field(default=None, repr=False)

    @property
    def amount_eur(self) -> float:
        return self.amount * EUR_RATES[self.currency]

    def to_json_dict(self) -> dict[str, Any]:
        """The optional ids only when set, so an event without them writes the same bytes as before them."""
        d: dict[str, Any] = {
            "tx_id": self.tx_id,
            "card_id": self.card_id,
            "merchant_id": self.merchant_id,
            "amount": self.amount,
            "currency": self.currency,
            "timestamp": format_ts(self.ts_ms),
            "country": self.country,
            "channel": self.channel,
            "mcc": self.mcc,
        }
        for name, value in (("device_id", self.device_id), ("ip", self.ip), ("email_hash", self.email_hash)):
            if value is not None:
                d[name] = value
        return d

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_json_dict())


def kept_json(obj: Any) -> bytes:
    """JSON bytes for a value held in memory for long (table values): the bytes ``orjson.dumps`` returns
    keep its whole working buffer (measured: 4 KB for a 600-byte card state), so they are copied to their
    exact size once."""
    return bytes(memoryview(orjson.dumps(obj)))


def format_ts(ts_ms: int) -> str:
    """RFC 3339 UTC with milliseconds, the wire format of every timestamp we write. The time of day is
    plain arithmetic (UTC has no leap seconds in Unix time); only the date goes through the calendar,
    once per day: an event's every second is new to a cache of seconds, and strftime cost ~5 µs."""
    secs, ms = divmod(ts_ms, 1000)
    day, rest = divmod(secs, 86_400)
    hour, rest = divmod(rest, 3600)
    minute, second = divmod(rest, 60)
    return f"{_format_day(day)}T{hour:02d}:{minute:02d}:{second:02d}.{ms:03d}Z"


@lru_cache(maxsize=4096)
def _format_day(day: int) -> str:
    return datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y-%m-%d")


def parse_ts(value: object, field: str = "timestamp") -> int:
    """RFC 3339 / ISO 8601 with an explicit offset (a naive time is ambiguous), or epoch ms."""
    if isinstance(value, bool):
        raise WrongType(f"{field} must be an RFC 3339 string or epoch milliseconds", field)
    if isinstance(value, int):
        if not 0 <= value < MAX_TS_MS:
            raise InvalidValue(f"{field} epoch milliseconds out of range", field)
        return value
    if not isinstance(value, str):
        raise WrongType(f"{field} must be an RFC 3339 string or epoch milliseconds", field)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidValue(f"{field} is not an RFC 3339 timestamp", field) from None
    if parsed.tzinfo is None:
        raise InvalidValue(f"{field} needs a UTC offset (e.g. Z)", field)
    ts_ms = (parsed - _EPOCH) // _MS
    if not 0 <= ts_ms < MAX_TS_MS:  # the range of the epoch form, and of what format_ts writes back
        raise InvalidValue(f"{field} must be between 1970 and 3000", field)
    return ts_ms


#: No key: card ids that look like card numbers are refused (``raw_pan``). The default of every parser,
#: so a caller that forgets the key never lets a raw card number through.
NO_PAN_KEY: Final = PanTokenizer()


def _card_field(obj: dict[str, Any], name: str, pans: PanTokenizer) -> str:
    """A card id; one that looks like a raw card number becomes its token (``stream_app.domain.pan``)."""
    value = obj.get(name)
    if isinstance(value, str) and (digits := pan_digits(value)) is not None:
        token = pans.token(digits)
        if token is None:
            raise RawPan(f"{name} looks like a raw card number and no PAN key is set", name)
        return token
    return _str_field(obj, name, _ID_RE)


def is_id(value: Any) -> bool:
    """Whether ``value`` is an id as events carry them (tx_id, card_id, merchant_id)."""
    return isinstance(value, str) and _ID_RE.match(value) is not None


def _str_field(obj: dict[str, Any], name: str, pattern: re.Pattern[str]) -> str:
    value = obj.get(name)
    if value is None:
        raise MissingField(f"missing field {name}", name)
    if not isinstance(value, str):
        raise WrongType(f"{name} must be a string", name)
    if not pattern.match(value):
        raise InvalidValue(f"{name} has an invalid format", name)
    return value


def _enum_field(obj: dict[str, Any], name: str, allowed: Collection[str]) -> str:
    value = obj.get(name)
    if value is None:
        raise MissingField(f"missing field {name}", name)
    if not isinstance(value, str):
        raise WrongType(f"{name} must be a string", name)
    if value not in allowed:
        raise InvalidValue(f"{name} must be one of {sorted(allowed)}", name)
    return value


def _optional_id(obj: dict[str, Any], name: str, pattern: re.Pattern[str], rule: str) -> str | None:
    """An optional entity id; absent or null is None. The detail never quotes the value (personal data)."""
    value = obj.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise WrongType(f"{name} must be a string", name)
    if not pattern.fullmatch(value):
        raise InvalidValue(f"{name} must be {rule}", name)
    return value


def _ip(obj: dict[str, Any]) -> str | None:
    """An IPv4 or IPv6 address in its normalised text form, so one address is one entity however it was
    written; an IPv4-mapped IPv6 address is its IPv4 address. A zone (``fe80::1%eth0``) is refused: it
    only means something on the host that wrote it (JSON Schema's ``ipv6`` format refuses it too)."""
    value = obj.get("ip")
    if value is None:
        return None
    if not isinstance(value, str):
        raise WrongType("ip must be a string", "ip")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise InvalidValue("ip must be an IPv4 or IPv6 address", "ip") from None
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id is not None:
            raise InvalidValue("ip must not carry a zone (%...)", "ip")
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
    return str(address)


def _amount(obj: dict[str, Any]) -> float:
    """0 (a card verification) or an amount from ``MIN_AMOUNT`` to ``MAX_AMOUNT``; see ``MIN_AMOUNT``."""
    value = obj.get("amount")
    if value is None:
        raise MissingField("missing field amount", "amount")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise WrongType("amount must be a number", "amount")
    amount = float(value)
    if not math.isfinite(amount):
        raise InvalidValue("amount must be finite", "amount")
    if not (amount == 0 or MIN_AMOUNT <= amount <= MAX_AMOUNT):
        raise InvalidValue(f"amount must be 0 or in [{MIN_AMOUNT:g}, {MAX_AMOUNT:g}]", "amount")
    return abs(amount)  # -0.0 is 0 (JSON Schema agrees): stored and echoed as 0.0


def load_json_object(raw: bytes, max_bytes: int) -> dict[str, Any]:
    """Decode one JSON object, refusing oversized input before spending time on it."""
    if len(raw) > max_bytes:
        raise MessageTooLarge(f"message is {len(raw)} bytes, limit {max_bytes}")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise NotJson(f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise NotAnObject("event must be a JSON object")
    return obj


def transaction_from_dict(obj: dict[str, Any], pans: PanTokenizer = NO_PAN_KEY) -> Transaction:
    tx_id = _str_field(obj, "tx_id", _ID_RE)
    card_id = _card_field(obj, "card_id", pans)
    merchant_id = _str_field(obj, "merchant_id", _ID_RE)
    amount = _amount(obj)
    currency = obj.get("currency")
    if currency is None:
        raise MissingField("missing field currency", "currency")
    if not isinstance(currency, str):
        raise WrongType("currency must be a string", "currency")
    if currency not in EUR_RATES:
        raise UnknownCurrency(f"unknown currency {currency[:8]!r}", "currency")
    if "timestamp" not in obj:
        raise MissingField("missing field timestamp", "timestamp")
    ts_ms = parse_ts(obj["timestamp"])
    country = _str_field(obj, "country", _COUNTRY_RE)
    channel = _enum_field(obj, "channel", CHANNELS)
    mcc = _str_field(obj, "mcc", _MCC_RE)
    return Transaction(tx_id, card_id, merchant_id, amount, currency, ts_ms, country, channel, mcc,
                       _optional_id(obj, "device_id", _DEVICE_RE, _DEVICE_RULE), _ip(obj),
                       _optional_id(obj, "email_hash", _EMAIL_HASH_RE, _EMAIL_HASH_RULE))


def parse_transaction(raw: bytes, max_bytes: int = 16384, pans: PanTokenizer = NO_PAN_KEY) -> Transaction:
    """The one ingress parser used by the stream, HTTP and batch paths; ``pans`` tokenizes card ids
    that look like raw card numbers (without a key they are refused as ``raw_pan``)."""
    return transaction_from_dict(load_json_object(raw, max_bytes), pans)


LABELS: Final[dict[str, bool]] = {"fraud": True, "legit": False}
LABEL_SOURCES: Final[frozenset[str]] = frozenset({"chargeback", "analyst", "customer"})
#: A later label for a labelled transaction corrects it when its source ranks at least as high as the learned
#: label's: the issuer's chargeback is final, an analyst's verdict beats a customer's claim, and between equals
#: the later one wins (an analyst revising a verdict).
LABEL_PRECEDENCE: Final[dict[str, int]] = {"customer": 0, "analyst": 1, "chargeback": 2}
#: Who gave an analyst verdict: a login or an e-mail address, as the review console sends it.
ANALYST_RE = re.compile(r"^[A-Za-z0-9_.:@\-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Label:
    tx_id: str
    card_id: str
    is_fraud: bool
    source: str
    label_ts_ms: int
    analyst: str | None = None  # who gave an analyst verdict

    def to_bytes(self) -> bytes:
        """The label as the labels topic carries it (what is parked when its card id was tokenized)."""
        d = {"tx_id": self.tx_id, "card_id": self.card_id, "label": "fraud" if self.is_fraud else "legit",
             "source": self.source, "label_time": format_ts(self.label_ts_ms)}
        return orjson.dumps(d if self.analyst is None else {**d, "analyst": self.analyst})

    def corrects(self, source: str, is_fraud: bool) -> bool:
        """Whether this label, arriving after one of ``source`` saying ``is_fraud``, replaces it."""
        return is_fraud != self.is_fraud and LABEL_PRECEDENCE[self.source] >= LABEL_PRECEDENCE.get(source, 0)


def parse_label(raw: bytes, max_bytes: int = 16384, pans: PanTokenizer = NO_PAN_KEY) -> Label:
    """The labels topic's parser: same error vocabulary and card-id tokenization as transactions."""
    obj = load_json_object(raw, max_bytes)
    tx_id = _str_field(obj, "tx_id", _ID_RE)
    card_id = _card_field(obj, "card_id", pans)
    label = _enum_field(obj, "label", LABELS)
    source = _enum_field(obj, "source", LABEL_SOURCES)
    if "label_time" not in obj:
        raise MissingField("missing field label_time", "label_time")
    analyst = _optional_id(obj, "analyst", ANALYST_RE, "1 to 64 letters, digits or _.:@-")
    return Label(tx_id, card_id, LABELS[label], source, parse_ts(obj["label_time"], "label_time"), analyst)
