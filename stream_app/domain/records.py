"""Output records (scores, fraud-alerts, dead letters) as plain dicts, one builder each.

Their JSON Schemas are in schemas/; a unit test validates every builder's output against them.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stream_app.domain.decision import ReasonModel
from stream_app.domain.events import InvalidEvent, format_ts
from stream_app.domain.pan import PanTokenizer
from stream_app.domain.scoring import Scored


@dataclass(frozen=True, slots=True)
class Source:
    """Where a record came from; ``timestamp_ms`` is the broker/producer timestamp of the message."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int

    @classmethod
    def of(cls, message: Any) -> Source:
        """From a Faust message (topic, partition, offset, timestamp in seconds)."""
        return cls(message.topic, message.partition, message.offset, int(message.timestamp * 1000))

    def as_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "partition": self.partition, "offset": self.offset}


def model_scores(s: Scored) -> dict[str, float]:
    """Each model's score as published (rounded to 6 digits), and as the label join captures it."""
    scores = {"onnx": round(s.onnx_score, 6), "river": round(s.river_score, 6)}
    if s.challenger_score is not None:
        scores["challenger"] = round(s.challenger_score, 6)
    return scores


def rules_field(s: Scored) -> dict[str, Any]:
    """``{"rules": ...}`` when a rule set was serving: its version, the model's decision, the rule that set the
    decision and every rule that matched (shadow ones included); nothing without a rule set."""
    return {} if s.rules is None else {"rules": s.rules.as_dict()}


def decision_record(s: Scored) -> dict[str, Any]:
    """What every door answers about a scored transaction (stream, HTTP, batch)."""
    tx = s.tx
    return {
        "tx_id": tx.tx_id,
        "card_id": tx.card_id,
        "merchant_id": tx.merchant_id,  # with event_time and features.amount_eur: what entity replicas read back
        "event_time": format_ts(tx.ts_ms),
        "decision": s.decision,
        "risk_score": round(s.risk, 6),
        "scores": model_scores(s),
        "model_versions": s.versions,
        "policy": s.policy,
        "features": dict(zip(s.names, s.features, strict=True)),
        **rules_field(s),
    }


def prediction_record(s: Scored, reasons: ReasonModel) -> dict[str, Any]:
    """The HTTP answer: the decision with its reasons, without stream metadata."""
    return {**decision_record(s), "reasons": reasons.top_reasons(s.features)}


def score_record(s: Scored, source: Source, scored_at_ms: int,
                 entities: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``entities``: digests of the personal entity ids (device, IP, ...) declared, for entity replicas."""
    return {
        **decision_record(s),
        **({"entities": dict(entities)} if entities else {}),
        "source": source.as_dict(),
        "timing": {
            "source_timestamp_ms": source.timestamp_ms,
            "scored_at_ms": scored_at_ms,
            "latency_ms": scored_at_ms - source.timestamp_ms,
        },
    }


def alert_record(s: Scored, reasons: ReasonModel, alerted_at_ms: int) -> dict[str, Any]:
    tx = s.tx
    return {
        "alert_id": tx.tx_id,
        "tx_id": tx.tx_id,
        "card_id": tx.card_id,
        "merchant_id": tx.merchant_id,
        "amount": tx.amount,
        "currency": tx.currency,
        "country": tx.country,
        "event_time": format_ts(tx.ts_ms),
        "decision": s.decision,
        "risk_score": round(s.risk, 6),
        "scores": model_scores(s),
        "model_versions": s.versions,
        "reasons": reasons.top_reasons(s.features),
        **rules_field(s),
        "alerted_at": format_ts(alerted_at_ms),
    }


#: Bytes of a dead-letter record beside the kept prefixes (reason, detail, source, sizes, digests): a bound
#: used to check that a record always fits the producer's request limit.
DEAD_LETTER_OVERHEAD = 4096
KEY_KEPT_BYTES = 1024  # of a message key, in the record and as the dead-letter message's own key
DETAIL_KEPT_CHARS = 1024


def b64_size(n: int) -> int:
    """Length of the base64 encoding of ``n`` bytes (4 characters per 3 bytes, padded)."""
    return 4 * ((n + 2) // 3)


def dead_letter_record(raw: bytes | None, error: InvalidEvent, source: Source, key: bytes | None,
                       at_ms: int, pans: PanTokenizer | None = None,
                       max_original_bytes: int = 65536) -> dict[str, Any]:
    """The original bytes travel base64-encoded, up to ``max_original_bytes`` (a message of any size
    yields a record that can be produced), with the size and SHA-256 of the whole; card numbers are
    replaced first, in the whole message and key (any field) — by their token under ``pans``'s key, or
    masked to their last four digits without one (``stream_app.domain.pan``) — so a number cut at the edge of
    the prefix cannot leak, and the digest is of the masked bytes (a bare digest of a card number can
    be reversed by enumerating numbers)."""
    pans = pans or PanTokenizer()
    masked = pans.mask(raw or b"")
    masked_key = None if key is None else pans.mask(key)
    return {
        "reason": error.reason,
        "detail": error.detail[:DETAIL_KEPT_CHARS],
        "field": None if error.field is None else error.field[:DETAIL_KEPT_CHARS],
        "source": source.as_dict(),
        "key_b64": None if masked_key is None else base64.b64encode(masked_key[:KEY_KEPT_BYTES]).decode(),
        "key_size": None if key is None else len(key),
        "original_b64": base64.b64encode(masked[:max_original_bytes]).decode(),
        "original_size": len(raw or b""),
        "original_sha256": hashlib.sha256(masked).hexdigest(),
        "original_truncated": len(masked) > max_original_bytes,
        "dead_lettered_at": format_ts(at_ms),
    }


def minimal_dead_letter_record(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` without the original's bytes: what is published when the full record is refused
    (e.g. a broker whose message limit is below the producer's), so a poison message cannot stop the
    worker again and again; size and digest still identify the original."""
    return {**record, "key_b64": None, "original_b64": "", "original_truncated": record["original_size"] > 0}


def dead_letter_key(key: bytes | None, pans: PanTokenizer) -> bytes | None:
    """The dead-letter message's own key: the original key masked, or its digest when long (a key of any
    size must not make the record too large to produce)."""
    if key is None:
        return None
    masked = pans.mask(key)
    return masked if len(masked) <= KEY_KEPT_BYTES else b"sha256:" + hashlib.sha256(masked).hexdigest().encode()
