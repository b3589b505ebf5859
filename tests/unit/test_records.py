"""Every output builder writes records valid against the JSON Schemas in schemas/."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import orjson
import pytest

from stream_app.decision import ReasonModel
from stream_app.events import InvalidValue, Transaction
from stream_app.features import FEATURE_NAMES, featurize
from stream_app.records import Source, alert_record, dead_letter_record, score_record
from stream_app.scoring import Scored

SCHEMAS = Path(__file__).parents[2] / "schemas"
TX = Transaction("tx-1", "card_1", "m_1", 99.5, "EUR", 1_767_225_600_000, "FR", "ecom", "4816")
SOURCE = Source("transactions", 2, 41, 1_767_225_600_100)


def validator(name: str) -> jsonschema.Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())


@pytest.fixture
def scored() -> Scored:
    row = featurize({}, TX, 7 * 86_400_000)
    return Scored(TX, row, 0.91, 0.4, 0.85, "decline", {"onnx": "gbt-test", "river": "river-logreg@10"},
                  "weighted", 0.7)


def reasons() -> ReasonModel:
    n = len(FEATURE_NAMES)
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
    from stream_app.generator import LabeledTx, label_record

    validator("label").validate(label_record(LabeledTx(TX, True, "amount_spike"), 1_767_225_700_000))
