"""JSON Schemas of every record, built from the code's own constants (currencies, channels, features).

`schemas/*.json` are written from here (`python -m stream_app.domain.schemas schemas/`) and a test checks
they are current, so the published schemas cannot drift from what the parser accepts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from stream_app.domain.entities import MODEL_FEATURES
from stream_app.domain.events import (
    CHANNELS,
    ENTITY_ID_MAX,
    EUR_RATES,
    LABEL_SOURCES,
    LABELS,
    MAX_AMOUNT,
    MAX_TS_MS,
    MIN_AMOUNT,
)

_ID = {"type": "string", "pattern": "^[A-Za-z0-9_.:\\-]{1,64}$"}
_TS = {"type": "string", "format": "date-time", "description": "RFC 3339 with a UTC offset"}
#: The IPv6 text form with the most characters (each group with its leading zeros, IPv4 at the end).
_MAX_IP_CHARS = len("0000:0000:0000:0000:0000:ffff:255.255.255.255")
DLQ_REASONS = ("message_too_large", "invalid_json", "not_an_object", "missing_field", "wrong_type", "invalid_value",
               "unknown_currency", "late_event", "unknown_tx", "raw_pan", "misrouted")


def _schema(name: str, title: str, desc: str, props: dict[str, Any], required: list[str],
            extra: bool = False) -> dict[str, Any]:
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": f"stream_app/{name}.schema.json",
            "title": title, "description": desc, "type": "object", "properties": props,
            "required": required, "additionalProperties": extra}


def _entity_id(forbidden: str, desc: str) -> dict[str, Any]:
    """An optional id of printable ASCII. A ``not`` of the characters it may not hold, rather than an
    anchored pattern: Python's ``$`` also matches before a final newline, which the parser refuses."""
    return {"type": ["string", "null"], "minLength": 1, "maxLength": ENTITY_ID_MAX,
            "not": {"type": "string", "pattern": f"[^{forbidden}]"}, "description": desc}


def _build() -> dict[str, dict[str, Any]]:
    versions = {"type": "object", "properties": {"onnx": {"type": "string"}, "river": {"type": "string"}},
                "required": ["onnx", "river"], "additionalProperties": {"type": "string"},
                "description": "Versions of the models that produced the scores (stacker, challenger when used)."}
    probability = {"type": "number", "minimum": 0, "maximum": 1}
    scores = {"type": "object", "properties": {"onnx": probability, "river": probability, "challenger": probability},
              "required": ["onnx", "river"], "additionalProperties": False,
              "description": "Each model's fraud probability; challenger only when one runs in shadow."}
    source = {"type": "object", "description": "Topic, partition and offset of the input message.",
              "properties": {"topic": {"type": "string"}, "partition": {"type": "integer"},
                             "offset": {"type": "integer"}},
              "required": ["topic", "partition", "offset"], "additionalProperties": False}
    features = {"type": "object", "description": "The feature vector used, by name (what the label will train on).",
                "properties": {n: {"type": "number"} for n in MODEL_FEATURES}, "required": list(MODEL_FEATURES),
                "additionalProperties": False}
    reasons = {"type": "array", "maxItems": 3, "description": "Features that pushed the score up the most.",
               "items": {"type": "object", "properties": {"feature": {"enum": list(MODEL_FEATURES)},
                                                          "value": {"type": "number"}, "push": {"type": "number"},
                                                          "text": {"type": "string", "description":
                                                                   "e.g. merchant fraud share 7d = 0.4"}},
                         "required": ["feature", "value", "push", "text"], "additionalProperties": False}}
    decisions = ["approve", "review", "decline"]
    rules = {"type": "object", "description": "Only while a rule set serves (`stream-app rules publish`): what it did.",
             "properties": {
                 "version": {"type": "string", "description": "The rule set's version."},
                 "model_decision": {"enum": decisions, "description": "The models' decision, before the rules."},
                 "decided_by": {"type": ["string", "null"], "description": "The id of the rule that set `decision`; "
                                "null when the models' decision stands."},
                 "hits": {"type": "array", "description": "Every rule that matched, shadow rules included.",
                          "items": {"type": "object", "properties": {
                              "id": {"type": "string"}, "action": {"enum": ["decline", "approve", "review"]},
                              "mode": {"enum": ["enforce", "shadow"]}, "reason": {"type": "string"}},
                              "required": ["id", "action", "mode", "reason"], "additionalProperties": False}}},
             "required": ["version", "model_decision", "decided_by", "hits"], "additionalProperties": False}
    tx_fields = ["tx_id", "card_id", "merchant_id", "amount", "currency", "timestamp", "country", "channel", "mcc"]
    return {
        "transaction": _schema("transaction", "Transaction",
                               "A payment event published to `transactions`, keyed by card_id.", {
            "tx_id": {**_ID, "description": "Unique transaction id (replays with the same id are recognised)."},
            "card_id": {**_ID, "description": "Card token; never a raw card number."},
            "merchant_id": {**_ID, "description": "Merchant / terminal id."},
            "amount": {"type": "number", "anyOf": [{"const": 0}, {"minimum": MIN_AMOUNT, "maximum": MAX_AMOUNT}],
                       "description": "Amount in `currency`: 0 (a card verification), or from 0.001 (the smallest "
                                      "minor unit) to 1e9; nothing between 0 and 0.001."},
            "currency": {"enum": sorted(EUR_RATES),
                         "description": "ISO 4217 code (the currencies with a reference rate)."},
            "timestamp": {"oneOf": [_TS, {"type": "integer", "minimum": 0, "exclusiveMaximum": MAX_TS_MS,
                                          "description": "epoch milliseconds"}],
                          "description": "Event time: RFC 3339 with offset, or epoch ms; from 1970 to 3000."},
            "country": {"type": "string", "pattern": "^[A-Z]{2}$",
                        "description": "ISO 3166-1 alpha-2 of the merchant."},
            "channel": {"enum": sorted(CHANNELS), "description": "pos (card present), ecom, atm, moto (mail/phone)."},
            "mcc": {"type": "string", "pattern": "^[0-9]{4}$", "description": "ISO 18245 merchant category code."},
            "device_id": _entity_id("!-~", "Optional device id (personal data): 1 to 128 printable ASCII characters, "
                                           "no spaces."),
            "ip": {"type": ["string", "null"], "maxLength": _MAX_IP_CHARS,
                   "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}],
                   "description": "Optional client IP address (personal data): IPv4 or IPv6 without a zone; stored "
                                  "in its normalised form (an IPv4-mapped IPv6 address as IPv4)."},
            "email_hash": _entity_id("!-?A-~", "Optional hash of the customer's e-mail address (personal data): "
                                               "1 to 128 printable ASCII characters, no spaces, no @."),
        }, tx_fields, extra=True),
        "label": _schema("label", "Label", "Feedback on a transaction, published to `labels`, keyed by tx_id.", {
            "tx_id": {**_ID, "description": "The transaction this label is about."},
            "card_id": {**_ID, "description": "Card token of the transaction."},
            "label": {"enum": sorted(LABELS), "description": "Verdict."},
            "source": {"enum": sorted(LABEL_SOURCES), "description": "Who gave the verdict."},
            "label_time": {**_TS, "description": "When the verdict was given."},
            "analyst": {"type": "string", "pattern": "^[A-Za-z0-9_.:@\\-]{1,64}$",
                        "description": "Who gave the verdict (analyst labels from the review console)."},
        }, ["tx_id", "card_id", "label", "source", "label_time"]),
        "score": _schema("score", "Score",
                         "One decision per valid transaction, published to `scores`, keyed by tx_id.", {
            "tx_id": _ID, "card_id": _ID,
            "merchant_id": {**_ID, "description": "The transaction's merchant (entity replicas read it back)."},
            "entities": {"type": "object", "additionalProperties": {"type": "string", "pattern": "^[0-9a-f]{24}$"},
                         "description": "Only with entities declared beyond the merchant (STREAM_APP_ENTITIES): "
                                        "entity name -> keyed digest of its id (device, IP, e-mail hash), never "
                                        "the id itself."},
            "event_time": {**_TS, "description": "The transaction's event time."},
            "decision": {"enum": decisions,
                         "description": "approve below the review threshold, review at or above it, decline at or "
                                        "above the decline threshold; a rule can change it (`rules`)."},
            "risk_score": {**probability, "description": "Combined risk."},
            "scores": scores, "model_versions": versions,
            "policy": {"enum": ["weighted", "stacked"], "description": "The combination that produced risk_score."},
            "features": features, "rules": rules, "source": source,
            "timing": {"type": "object",
                       "description": "source_timestamp_ms: the input message's timestamp; scored_at_ms: when the "
                                      "decision was made; latency_ms: their difference.",
                       "properties": {"source_timestamp_ms": {"type": "integer"}, "scored_at_ms": {"type": "integer"},
                                      "latency_ms": {"type": "integer"}},
                       "required": ["source_timestamp_ms", "scored_at_ms", "latency_ms"],
                       "additionalProperties": False},
        }, ["tx_id", "card_id", "merchant_id", "event_time", "decision", "risk_score", "scores", "model_versions",
            "policy", "features", "source", "timing"]),
        "alert": _schema("alert", "Fraud alert", "One alert per transaction decided review or decline, published to "
                         "`fraud-alerts`, keyed by card_id.", {
            "alert_id": {**_ID, "description": "Equals tx_id: one alert per transaction; consumers can de-duplicate."},
            "tx_id": _ID, "card_id": _ID, "merchant_id": _ID,
            "amount": {"type": "number"}, "currency": {"type": "string"}, "country": {"type": "string"},
            "event_time": _TS, "decision": {"enum": ["review", "decline"]},
            "risk_score": probability, "scores": scores, "model_versions": versions, "reasons": reasons,
            "rules": rules, "alerted_at": _TS,
        }, ["alert_id", "tx_id", "card_id", "merchant_id", "amount", "currency", "country", "event_time", "decision",
            "risk_score", "scores", "model_versions", "reasons", "alerted_at"]),
        "dead_letter": _schema("dead_letter", "Dead-letter record", "An input message that could not be processed, "
                               "published to `transactions.dlq` (or `labels.dlq`) with the reason.", {
            "reason": {"enum": list(DLQ_REASONS), "description": "Stable reason code."},
            "detail": {"type": "string", "description": "Human-readable explanation."},
            "field": {"type": ["string", "null"], "description": "The offending field, when one is to blame."},
            "source": source,
            "key_b64": {"type": ["string", "null"],
                        "description": "The message key (card numbers masked), base64, its first 1024 bytes."},
            "key_size": {"type": ["integer", "null"], "minimum": 0,
                         "description": "Size of the message key in bytes (null: no key)."},
            "original_b64": {"type": "string", "description": (
                "The original message bytes (card numbers masked), base64: the whole message, or its first "
                "STREAM_APP_DLQ_ORIGINAL_MAX_BYTES bytes when original_truncated; empty in the minimal record "
                "published when the full one was refused.")},
            "original_size": {"type": "integer", "minimum": 0,
                              "description": "Size of the whole original message in bytes."},
            "original_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$",
                                "description": "SHA-256 (hex) of the whole original message after card-number "
                                               "masking."},
            "original_truncated": {"type": "boolean",
                                   "description": "True when original_b64 holds less than the whole message."},
            "dead_lettered_at": _TS,
        }, ["reason", "detail", "field", "source", "key_b64", "key_size", "original_b64", "original_size",
            "original_sha256", "original_truncated", "dead_lettered_at"]),
    }


SCHEMAS: dict[str, dict[str, Any]] = _build()


def load_schema(name: str) -> dict[str, Any]:
    return SCHEMAS[name]


def write_all(directory: Path) -> None:
    for name, schema in SCHEMAS.items():
        (directory / f"{name}.schema.json").write_text(json.dumps(schema, indent=2) + "\n")


if __name__ == "__main__":
    write_all(Path(sys.argv[1] if len(sys.argv) > 1 else "schemas"))
