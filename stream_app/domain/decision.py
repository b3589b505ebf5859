"""Combine the two model scores into one risk, decide, and explain: pure functions.

Policy ("weighted"): risk = (1 - w) * onnx + w * river, where the River weight w grows linearly
with the labels River has learned, from 0 to ``river_max_weight`` after ``river_warmup_labels``.
An online model that has seen no labels has no say; the offline model always keeps the majority.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from stream_app.domain.entities import MODEL_FEATURES

Decision = Literal["approve", "review", "decline"]


@dataclass(frozen=True, slots=True)
class Policy:
    review_threshold: float = 0.3
    decline_threshold: float = 0.8
    river_max_weight: float = 0.1
    river_warmup_labels: int = 2000

    def river_weight(self, river_labels: int) -> float:
        if self.river_warmup_labels <= 0:
            return self.river_max_weight
        return self.river_max_weight * min(1.0, river_labels / self.river_warmup_labels)

    def combine(self, onnx_score: float, river_score: float, river_labels: int) -> float:
        w = self.river_weight(river_labels)
        return (1.0 - w) * onnx_score + w * river_score

    def decide(self, risk: float) -> Decision:
        if risk >= self.decline_threshold:
            return "decline"
        if risk >= self.review_threshold:
            return "review"
        return "approve"


@dataclass(frozen=True, slots=True)
class ReasonModel:
    """Per-feature statistics of the training data, from the model card.

    A feature is a reason when it lies on the fraud side of the legit distribution: its push is
    importance * direction * (x - legit mean) / legit std, and the largest positive pushes are
    reported. A heuristic that needs no model internals, so it serves any model with a card.
    """

    legit_mean: tuple[float, ...]
    legit_std: tuple[float, ...]
    direction: tuple[float, ...]
    importance: tuple[float, ...]
    names: tuple[str, ...] = MODEL_FEATURES

    @classmethod
    def from_card(cls, card: Mapping[str, Any]) -> ReasonModel:
        stats = card["feature_stats"]
        names = tuple(card.get("feature_names", MODEL_FEATURES))
        return cls(
            tuple(float(stats[n]["legit_mean"]) for n in names),
            tuple(max(float(stats[n]["legit_std"]), 1e-9) for n in names),
            tuple(1.0 if stats[n]["fraud_mean"] >= stats[n]["legit_mean"] else -1.0 for n in names),
            tuple(float(stats[n]["importance"]) for n in names),
            names,
        )

    def top_reasons(self, features: Sequence[float], k: int = 3) -> list[dict[str, float | str]]:
        pushes = []
        for i, x in enumerate(features):
            push = self.importance[i] * self.direction[i] * (x - self.legit_mean[i]) / self.legit_std[i]
            if push > 0:
                pushes.append((push, i))
        pushes.sort(reverse=True)
        return [{"feature": self.names[i], "value": round(features[i], 6), "push": round(p, 4),
                 "text": reason_text(self.names[i], features[i])} for p, i in pushes[:k]]


def reason_text(feature: str, value: float) -> str:
    """A reason as an analyst reads it: ``merchant fraud share 7d = 0.4``."""
    return f"{feature.replace('_', ' ')} = {value:.3g}"
