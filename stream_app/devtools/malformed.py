"""Malformed variants of valid transactions, for the demo, tests and fuzzing of the ingress path.

Each variant comes with the dead-letter reason the parser must give it, so a test can check that
every bad event is accounted for with the right reason.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import orjson

from stream_app.domain.events import Transaction


def _dump(d: dict[str, object]) -> bytes:
    return orjson.dumps(d)


def _truncated(tx: Transaction, rng: random.Random) -> bytes:
    raw = tx.to_bytes()
    return raw[: rng.randrange(1, len(raw) - 1)]


def _without(field: str) -> Callable[[Transaction, random.Random], bytes]:
    def make(tx: Transaction, _rng: random.Random) -> bytes:
        d = tx.to_json_dict()
        del d[field]
        return _dump(d)
    return make


def _with(field: str, value: object) -> Callable[[Transaction, random.Random], bytes]:
    def make(tx: Transaction, _rng: random.Random) -> bytes:
        d = tx.to_json_dict()
        d[field] = value
        return _dump(d)
    return make


def _nan_amount(tx: Transaction, _rng: random.Random) -> bytes:
    # orjson refuses to write NaN, but producers written in other languages do write it.
    return tx.to_bytes().replace(orjson.dumps(tx.amount), b"NaN", 1)


def _oversized(tx: Transaction, _rng: random.Random) -> bytes:
    d = tx.to_json_dict()
    d["note"] = "x" * 20_000
    return _dump(d)


#: (name, maker, expected DLQ reason)
VARIANTS: tuple[tuple[str, Callable[[Transaction, random.Random], bytes], str], ...] = (
    ("truncated_json", _truncated, "invalid_json"),
    ("not_json", lambda tx, rng: b"\x00\xffgarbage", "invalid_json"),
    ("json_array", lambda tx, rng: b"[1, 2, 3]", "not_an_object"),
    ("missing_amount", _without("amount"), "missing_field"),
    ("missing_card", _without("card_id"), "missing_field"),
    ("amount_as_text", _with("amount", "12.50"), "wrong_type"),
    ("nan_amount", _nan_amount, "invalid_json"),
    ("negative_amount", _with("amount", -5.0), "invalid_value"),
    ("sub_minor_unit_amount", _with("amount", 0.0005), "invalid_value"),  # 0 is valid, (0, 0.001) is not
    ("unknown_currency", _with("currency", "XXX"), "unknown_currency"),
    ("bad_timestamp", _with("timestamp", "yesterday"), "invalid_value"),
    ("oversized", _oversized, "message_too_large"),
)


def corrupt(tx: Transaction, rng: random.Random) -> tuple[bytes, str]:
    """A malformed message made from ``tx`` and the reason it must be dead-lettered with."""
    _name, make, reason = VARIANTS[rng.randrange(len(VARIANTS))]
    return make(tx, rng), reason
