"""Output records (scores, fraud-alerts, dead letters) as plain dicts, one builder each.

Their JSON Schemas are in schemas/; a unit test validates every builder's output against them.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from stream_app.decision import ReasonModel
from stream_app.events import InvalidEvent, format_ts
from stream_app.features import FEATURE_NAMES
from stream_app.pan import PanTokenizer
from stream_app.scoring import Scored


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


def decision_record(s: Scored) -> dict[str, Any]:
    """What every door answers about a scored transaction (stream, HTTP, batch)."""
    tx = s.tx
    return {
        "tx_id": tx.tx_id,
        "card_id": tx.card_id,
        "event_time": format_ts(tx.ts_ms),
        "decision": s.decision,
        "risk_score": round(s.risk, 6),
        "scores": model_scores(s),
        "model_versions": s.versions,
        "policy": s.policy,
        "features": dict(zip(FEATURE_NAMES, s.features, strict=True)),
    }


def prediction_record(s: Scored, reasons: ReasonModel) -> dict[str, Any]:
    """The HTTP answer: the decision with its reasons, without stream metadata."""
    return {**decision_record(s), "reasons": reasons.top_reasons(s.features)}


def score_record(s: Scored, source: Source, scored_at_ms: int) -> dict[str, Any]:
    return {
        **decision_record(s),
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
        "alerted_at": format_ts(alerted_at_ms),
    }


def dead_letter_record(raw: bytes | None, error: InvalidEvent, source: Source, key: bytes | None,
                       at_ms: int, pans: PanTokenizer | None = None) -> dict[str, Any]:
    """The original bytes travel base64-encoded, so nothing about the bad event is lost — except card
    numbers: every one in the value or the key (any field) is replaced by its token under ``pans``'s key,
    or masked to its last four digits without a key (``stream_app.pan``)."""
    pans = pans or PanTokenizer()
    raw, key = (None if raw is None else pans.mask(raw)), (None if key is None else pans.mask(key))
    return {
        "reason": error.reason,
        "detail": error.detail,
        "field": error.field,
        "source": source.as_dict(),
        "key_b64": None if key is None else base64.b64encode(key).decode(),
        "original_b64": base64.b64encode(raw or b"").decode(),
        "dead_lettered_at": format_ts(at_ms),
    }
