"""Learning from labels: joined examples, the online learner and prequential quality. No Kafka here.

A label is joined to the feature vector and the scores captured when its transaction was scored;
the result is an :class:`Example`. Every worker applies the same ordered sequence of examples
(one partition of the ``river-examples`` topic) to the same starting model, so all workers hold
the same River model without shipping it around: a replicated state machine.
"""

from __future__ import annotations

import base64
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from stream_app.domain.events import kept_json
from stream_app.domain.records import Source, model_scores
from stream_app.domain.scoring import Scored
from stream_app.models.river_model import RiverScorer
from stream_app.models.stacker import Stacker
from stream_app.offline.evaluation import average_precision, roc_auc


@dataclass(frozen=True, slots=True)
class Captured:
    """What the label join needs from a score record: the vector the models saw, and their scores."""

    features: list[float]
    scores: dict[str, float]  # onnx, river, risk, and challenger when one ran
    captured_at_ms: int
    #: The transaction's card, event time and entity ids ({"card", "ts", "keys"}), for the entity table's
    #: label-derived risk; None in entries captured by a worker before entity profiles (format v1).
    entity: dict[str, Any] | None = None

    def fields(self) -> list[Any]:
        """v1: [features, scores, at]; v2 appends the entity dict."""
        fields: list[Any] = [self.features, self.scores, self.captured_at_ms]
        return fields if self.entity is None else [*fields, self.entity]

    def to_bytes(self) -> bytes:
        return kept_json(self.fields())

    @classmethod
    def from_fields(cls, fields: list[Any]) -> Captured:
        features, scores, at, *rest = fields
        return cls(features, scores, at, rest[0] if rest else None)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Captured:
        return cls.from_fields(orjson.loads(raw))

    @classmethod
    def from_scored(cls, scored: Scored, now_ms: int, keys: dict[str, str] | None = None) -> Captured:
        """Captured at scoring time, with the scores exactly as the score record publishes them."""
        scores = model_scores(scored)
        scores["risk"] = round(scored.risk, 6)
        entity = None if keys is None else {"card": scored.tx.card_id, "ts": scored.tx.ts_ms, "keys": keys}
        return cls(list(scored.features), scores, now_ms, entity)


@dataclass(frozen=True, slots=True)
class ParkedLabel:
    """A label that came before its score record: the original bytes and where they came from."""

    raw: bytes
    topic: str
    partition: int
    offset: int
    key: bytes | None
    parked_at_ms: int

    @property
    def source(self) -> Source:
        return Source(self.topic, self.partition, self.offset, self.parked_at_ms)

    def to_bytes(self) -> bytes:
        return kept_json([base64.b64encode(self.raw).decode(), self.topic, self.partition, self.offset,
                             None if self.key is None else base64.b64encode(self.key).decode(), self.parked_at_ms])

    @classmethod
    def from_bytes(cls, raw: bytes) -> ParkedLabel:
        value, topic, partition, offset, key, at = orjson.loads(raw)
        return cls(base64.b64decode(value), topic, partition, offset,
                   None if key is None else base64.b64decode(key), at)


#: The captured-table value left once a label was learned and the retention passed (and all that workers before
#: corrections kept): a later label for that transaction can only be a duplicate.
LEARNED = b"L"


_NUMBERS = frozenset({int, float})  # the types orjson decodes numbers to (not bool: true/false are not features)


@dataclass(frozen=True, slots=True)
class Learned:
    """A captured vector whose label was learned, with that label: kept until the retention ends, so that a
    later label with the precedence to correct it (:meth:`stream_app.domain.events.Label.corrects`) teaches
    the models the corrected verdict on the vector they saw.

    Stored as the capture's fields, the entity slot filled, and the verdict appended ([..., entity, [label,
    source]]): a worker of an earlier version reads it as a capture (it would learn a second label again,
    as it did before corrections), never as an unreadable value."""

    captured: Captured | None  # None: the bare marker, nothing left to correct
    is_fraud: bool = False
    source: str = ""

    def to_bytes(self) -> bytes:
        if self.captured is None:
            return LEARNED
        fields = self.captured.fields()
        return kept_json([*fields, *([None] * (4 - len(fields))), [int(self.is_fraud), self.source]])


def read_captured(raw: bytes) -> Captured | Learned:
    """A captured-table value: the vector waiting for its label, or the learned verdict (with the vector, or
    the bare marker)."""
    if raw == LEARNED:
        return Learned(None)
    fields = orjson.loads(raw)
    captured = Captured.from_fields(fields[:4])
    if len(fields) < 5:
        return captured
    return Learned(captured, bool(fields[4][0]), str(fields[4][1]))


@dataclass(frozen=True, slots=True)
class Example:
    tx_id: str
    features: list[float]
    is_fraud: bool
    scores: dict[str, float]
    source: str
    label_ts_ms: int
    #: The transaction's card, event time, entity ids and (for a fraud) compromise suspects, for the entity
    #: table (:class:`stream_app.domain.entities.LabelArrival`); None from captures without them.
    entity: dict[str, Any] | None = None
    analyst: str | None = None  # who gave an analyst verdict: the examples log says who taught the models

    def to_bytes(self) -> bytes:
        d = {"tx_id": self.tx_id, "features": self.features, "label": int(self.is_fraud), "scores": self.scores,
             "source": self.source, "label_ts_ms": self.label_ts_ms}
        if self.entity is not None:
            d["entity"] = self.entity
        if self.analyst is not None:
            d["analyst"] = self.analyst
        return orjson.dumps(d)

    @classmethod
    def from_bytes(cls, raw: bytes) -> Example:
        """Raises ValueError (or KeyError/TypeError) for a record a model must not learn from: the
        examples log is a topic anyone with write access can append to, and a null or infinite
        feature would break the online model's weights (a vector whose sum overflows is refused too)."""
        d = orjson.loads(raw)
        features = d["features"]
        if not isinstance(features, list) or not set(map(type, features)) <= _NUMBERS or not math.isfinite(
                sum(features)):  # checked as a whole: one pass in C instead of four checks a feature in Python
            raise ValueError("features must be finite numbers")
        entity = d.get("entity")
        if entity is not None and not isinstance(entity, dict):
            raise TypeError("entity must be an object")
        analyst = d.get("analyst")
        return cls(d["tx_id"], features, bool(d["label"]), d["scores"], d["source"], d["label_ts_ms"], entity,
                   None if analyst is None else str(analyst))


class PrequentialMetrics:
    """Rolling quality over the last ``window`` labels, from the scores given *before* the label."""

    def __init__(self, window: int = 5000, threshold: float = 0.3) -> None:
        self.window = window
        self.threshold = threshold
        self.labels: deque[bool] = deque(maxlen=window)
        self.scores: dict[str, deque[float]] = {}

    def update(self, is_fraud: bool, scores: dict[str, float]) -> None:
        self.labels.append(is_fraud)
        for name, value in scores.items():
            column = self.scores.get(name)
            if column is None:  # a model that appeared later: pad so columns stay aligned
                column = self.scores[name] = deque([math.nan] * (len(self.labels) - 1), maxlen=self.window)
            column.append(value)
        for name, column in self.scores.items():
            if name not in scores:
                column.append(math.nan)

    def snapshot(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        labels = np.fromiter(self.labels, dtype=bool, count=len(self.labels))
        for name, column in self.scores.items():
            scores = np.fromiter(column, dtype=np.float64, count=len(column))
            known = ~np.isnan(scores)
            if not known.any():
                continue
            y, s = labels[known], scores[known]
            flagged = y[s >= self.threshold]
            positives = int(y.sum())
            out[name] = {
                "labels": float(len(s)),
                "roc_auc": roc_auc(y, s),
                "average_precision": average_precision(y, s),
                "precision_at_threshold": float(flagged.mean()) if len(flagged) else math.nan,
                "recall_at_threshold": float(flagged.sum()) / positives if positives else math.nan,
            }
        return out


class OnlineLearner:
    """Applies examples in log order: quality first (on the scores given before), then learning."""

    def __init__(self, river: RiverScorer, stacker: Stacker | None, metrics: PrequentialMetrics,
                 learning: bool = True) -> None:
        self.river = river
        self.stacker = stacker
        self.metrics = metrics
        self.learning = learning
        self.offset = -1  # last applied offset of the examples log
        self.other_feature_set = 0  # examples whose vector is not of this code's feature set (not learned)

    def apply(self, example: Example, offset: int) -> None:
        self.apply_many([(example, offset)])

    def apply_many(self, items: Sequence[tuple[Example, int]]) -> None:
        """Examples with their log offsets, in log order: the same as one ``apply`` each, with the models
        taught a batch at a time (each model sees the rows in order, so the result is the same)."""
        rows: list[list[float]] = []
        learned: list[Example] = []
        for example, offset in items:
            if offset <= self.offset:
                continue  # already applied (replay after a checkpoint restore)
            self.metrics.update(example.is_fraud, example.scores)
            if len(example.features) != len(self.river.names):
                # Captured under another feature set (before an upgrade widened the vector): its scores still
                # count for quality, but its vector means other features, so it teaches nothing.
                self.other_feature_set += 1
            elif self.learning:
                rows.append(example.features)
                learned.append(example)
            self.offset = offset
        labels = [e.is_fraud for e in learned]
        self.river.learn_many(rows, labels)
        if self.stacker is not None:
            self.stacker.learn_many(rows, [e.scores for e in learned], labels)
