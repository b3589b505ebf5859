"""Every output builder writes records valid against the JSON Schemas in schemas/."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import jsonschema
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.domain.decision import ReasonModel
from stream_app.domain.entities import MODEL_FEATURES, EntityTable, featurize_model
from stream_app.domain.events import InvalidValue, MessageTooLarge, Transaction
from stream_app.domain.pan import PanTokenizer
from stream_app.domain.records import (
    DEAD_LETTER_OVERHEAD,
    KEY_KEPT_BYTES,
    Source,
    alert_record,
    b64_size,
    dead_letter_key,
    dead_letter_record,
    minimal_dead_letter_record,
    score_record,
)
from stream_app.domain.scoring import Scored

SCHEMAS = Path(__file__).parents[2] / "schemas"
TX = Transaction("tx-1", "card_1", "m_1", 99.5, "EUR", 1_767_225_600_000, "FR", "ecom", "4816")
SOURCE = Source("transactions", 2, 41, 1_767_225_600_100)


def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


@pytest.fixture
def scored() -> Scored:
    row = featurize_model({}, EntityTable(), TX, 7 * 86_400_000)
    return Scored(TX, row, 0.91, 0.4, 0.85, "decline", {"onnx": "gbt-test", "river": "river-logreg@10"},
                  "weighted", 0.7)


def reasons() -> ReasonModel:
    n = len(MODEL_FEATURES)
    return ReasonModel((0.0,) * n, (1.0,) * n, (1.0,) * n, (1.0 / n,) * n)


def test_transaction_schema_accepts_what_the_parser_accepts() -> None:
    validator("transaction").validate(orjson.loads(TX.to_bytes()))
    with pytest.raises(jsonschema.ValidationError):
        validator("transaction").validate({**orjson.loads(TX.to_bytes()), "amount": -1})


def test_score_record(scored: Scored) -> None:
    record = orjson.loads(orjson.dumps(score_record(scored, SOURCE, 1_767_225_600_150)))
    validator("score").validate(record)
    assert record["timing"]["latency_ms"] == 50 and record["model_versions"]["river"] == "river-logreg@10"


def test_alert_record(scored: Scored) -> None:
    record = orjson.loads(orjson.dumps(alert_record(scored, reasons(), 1_767_225_600_150)))
    validator("alert").validate(record)
    assert record["alert_id"] == record["tx_id"] == "tx-1" and 1 <= len(record["reasons"]) <= 3


def test_dead_letter_record_keeps_the_original_bytes() -> None:
    import base64

    raw = b'{"amount": -1}'
    record = dead_letter_record(raw, InvalidValue("amount must be > 0", "amount"), SOURCE, b"card_1", 1)
    validator("dead_letter").validate(orjson.loads(orjson.dumps(record)))
    assert base64.b64decode(record["original_b64"]) == raw and record["reason"] == "invalid_value"


def test_label_schema() -> None:
    from stream_app.devtools.generator import LabeledTx, label_record

    validator("label").validate(label_record(LabeledTx(TX, True, "amount_spike"), 1_767_225_700_000))


PAN = "4111111111111111"


@settings(max_examples=60, deadline=None)
@given(size=st.integers(0, 3_000_000), limit=st.integers(0, 700_000), key_size=st.integers(0, 2_000_000),
       pan_at=st.integers(0, 3_000_000))
def test_dead_letter_record_of_any_message_fits_a_produce_request(size: int, limit: int, key_size: int,
                                                                   pan_at: int) -> None:
    """Whatever the message and key sizes, the record (and its own key) stays below the 1 MB request
    limit; a card number anywhere, also across the cut, never comes out."""
    pan_at = min(pan_at, size)
    raw = (b"x" * pan_at + PAN.encode() + b"y" * size)[:max(size, pan_at + len(PAN))]
    key = PAN.encode() + b"k" * key_size
    record = dead_letter_record(raw, MessageTooLarge(f"message is {len(raw)} bytes, limit 16384"), SOURCE, key, 1,
                                max_original_bytes=limit)
    encoded = orjson.dumps(record)
    out_key = dead_letter_key(key, PanTokenizer())
    assert len(encoded) + len(out_key or b"") <= b64_size(limit) + b64_size(KEY_KEPT_BYTES) + DEAD_LETTER_OVERHEAD
    assert len(encoded) + len(out_key or b"") < 1_000_000
    kept = base64.b64decode(record["original_b64"])
    assert record["original_size"] == len(raw) and record["original_truncated"] == (len(raw) > limit)
    assert kept == PanTokenizer().mask(raw)[:limit]
    assert record["original_sha256"] == hashlib.sha256(PanTokenizer().mask(raw)).hexdigest()
    for digits in (PAN, PAN[:12], PAN[4:]):  # no whole number, nor its first 12 or last 12 digits
        assert digits.encode() not in kept + base64.b64decode(record["key_b64"]) + (out_key or b"")


def test_dead_letter_record_of_a_large_message_is_valid_and_minimal_record_keeps_size_and_digest() -> None:
    raw = b'{"tx_id": "' + b"z" * 900_000 + b'"}'
    record = dead_letter_record(raw, MessageTooLarge("too large"), SOURCE, b"card_1", 1, max_original_bytes=1000)
    validator("dead_letter").validate(orjson.loads(orjson.dumps(record)))
    assert len(base64.b64decode(record["original_b64"])) == 1000 and record["original_truncated"]
    minimal = minimal_dead_letter_record(record)
    validator("dead_letter").validate(orjson.loads(orjson.dumps(minimal)))
    assert minimal["original_b64"] == "" and minimal["key_b64"] is None
    assert (minimal["original_size"], minimal["original_sha256"]) == (len(raw), record["original_sha256"])
