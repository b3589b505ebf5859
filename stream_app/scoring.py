"""The scoring core: features in, decisions out. Imports nothing from Kafka or HTTP.

The Faust agents, batch scoring and the load tests all call :class:`FraudScorer`; each adapter only
turns bytes into transactions and decisions into records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from stream_app.decision import Decision, Policy, ReasonModel
from stream_app.events import Transaction
from stream_app.models.onnx_model import OnnxScorer
from stream_app.models.river_model import RiverScorer


@dataclass(frozen=True, slots=True)
class Scored:
    tx: Transaction
    features: list[float]
    onnx_score: float
    river_score: float
    risk: float
    decision: Decision
    onnx_version: str
    river_version: str

    @property
    def is_alert(self) -> bool:
        return self.decision != "approve"


class FraudScorer:
    def __init__(self, onnx: OnnxScorer, river: RiverScorer, policy: Policy) -> None:
        self.onnx = onnx
        self.river = river
        self.policy = policy
        self.reasons = ReasonModel.from_card(onnx.card)

    def score_many(self, txs: Sequence[Transaction], rows: Sequence[list[float]]) -> list[Scored]:
        """Score a micro-batch: one onnxruntime call for all rows, River row by row."""
        onnx_scores = self.onnx.predict_proba_many(rows)
        river_scores = self.river.predict_proba_many(rows)
        labels = self.river.n_learned
        onnx_version, river_version = self.onnx.version, self.river.version
        out = []
        for tx, row, o, r in zip(txs, rows, onnx_scores, river_scores, strict=True):
            risk = self.policy.combine(o, r, labels)
            out.append(Scored(tx, row, o, r, risk, self.policy.decide(risk), onnx_version, river_version))
        return out

    def learn_one(self, features: Sequence[float], is_fraud: bool) -> None:
        self.river.learn_one(features, is_fraud)
