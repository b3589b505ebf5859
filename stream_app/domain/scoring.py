"""The scoring core: features in, decisions out. Imports nothing from Kafka or HTTP.

The Faust agents, batch scoring and the load tests all call :class:`FraudScorer`; each adapter only
turns bytes into transactions and decisions into records.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from stream_app.domain.decision import Decision, Policy, ReasonModel
from stream_app.domain.entities import MODEL_FEATURES, FeatureSet
from stream_app.domain.events import Transaction
from stream_app.domain.rules import Batch, RuleOutcome, RulesSlot
from stream_app.models.onnx_model import OnnxScorer, load_configured
from stream_app.models.registry import ModelSlot
from stream_app.models.river_model import RiverScorer
from stream_app.models.stacker import Stacker
from stream_app.settings import Settings


@dataclass(frozen=True, slots=True)
class Scored:
    tx: Transaction
    features: list[float]
    onnx_score: float
    river_score: float
    risk: float
    decision: Decision
    versions: dict[str, str]
    policy: str = "weighted"
    challenger_score: float | None = None
    names: tuple[str, ...] = MODEL_FEATURES  # of ``features`` (the served model's feature set)
    rules: RuleOutcome | None = None  # what the rule set serving did (None: no rule set loaded)

    @property
    def is_alert(self) -> bool:
        return self.decision != "approve"


class FraudScorer:
    """Champion ONNX + River decide (fixed or stacked combination), then the rule set serving has its say
    (:mod:`stream_app.domain.rules`); a challenger only scores."""

    def __init__(self, onnx: ModelSlot | OnnxScorer, river: RiverScorer, policy: Policy,
                 stacker: Stacker | None = None, challenger: ModelSlot | None = None,
                 rules: RulesSlot | None = None) -> None:
        self.slot = onnx if isinstance(onnx, ModelSlot) else ModelSlot(onnx)
        self.river = river
        self.policy = policy
        self.stacker = stacker
        self.challenger = challenger
        self.rules = rules or RulesSlot()

    @classmethod
    def from_settings(cls, settings: Settings) -> FraudScorer:
        """The scorer a worker (or batch run) with these settings serves, with a fresh River model.

        A configured model file that cannot serve raises :class:`~stream_app.startup.StartupError`."""
        stacker = Stacker(settings.stacker_warmup_labels) if settings.combiner == "stacked" else None
        features = FeatureSet.parse(settings.entities)
        challenger = (ModelSlot(load_configured(settings.challenger_model_path, "STREAM_APP_CHALLENGER_MODEL",
                                                features)) if settings.challenger_model_path else None)
        policy = Policy(settings.review_threshold, settings.decline_threshold, settings.river_max_weight,
                        settings.river_warmup_labels)
        onnx = load_configured(settings.onnx_model_path, "STREAM_APP_ONNX_MODEL", features)
        return cls(onnx, RiverScorer(names=features.names), policy, stacker, challenger)

    @property
    def features(self) -> FeatureSet:
        """The vector this scorer's models take (the declared entities')."""
        return self.slot.current.features

    def adopt(self, river: RiverScorer, stacker: Stacker | None) -> None:
        """Take the online models of a checkpoint; its stacker only when this scorer uses one. A River model
        of another feature set (the entities were declared otherwise) is refused with ValueError."""
        if river.names != self.features.names:
            raise ValueError(f"the checkpoint's River model takes {len(river.names)} features, not this worker's "
                             f"{len(self.features.names)} ({self.features.name})")
        self.river = river
        if self.stacker is not None and stacker is not None:
            self.stacker = stacker

    @property
    def onnx(self) -> OnnxScorer:
        return self.slot.current

    @property
    def reasons(self) -> ReasonModel:
        return self.slot.current.reasons

    def versions(self, onnx: OnnxScorer | None = None, challenger: OnnxScorer | None = None) -> dict[str, str]:
        versions = {"onnx": (onnx or self.onnx).version, "river": self.river.version}
        if self.stacker is not None:
            versions["stacker"] = self.stacker.version
        if self.challenger is not None:
            versions["challenger"] = (challenger or self.challenger.current).version
        return versions

    def score_many(self, txs: Sequence[Transaction], rows: Sequence[list[float]],
                   observe: Callable[[str, float], None] | None = None) -> list[Scored]:
        """Score a micro-batch: one onnxruntime call for all rows, River row by row.

        ``observe(stage, seconds)`` receives the time spent in the ONNX and River stages (metrics)."""
        onnx = self.slot.current  # read once: a hot swap mid-batch must not mislabel versions
        challenger = self.challenger.current if self.challenger else None
        t0 = time.perf_counter()
        matrix = np.asarray(rows, dtype=np.float64)  # converted once for every model
        onnx_scores = onnx.predict_proba_many(matrix)
        challenger_scores: Sequence[float | None] = (
            challenger.predict_proba_many(matrix) if challenger else [None] * len(rows))
        t1 = time.perf_counter()
        river_scores = self.river.predict_proba_many(matrix)
        if observe is not None:
            observe("onnx", t1 - t0)
            observe("river", time.perf_counter() - t1)
        labels = self.river.n_learned
        versions = self.versions(onnx, challenger)
        if self.stacker is not None and self.stacker.ready:
            risks, policy = self.stacker.predict_proba_many(matrix, onnx_scores, river_scores), "stacked"
        else:
            pairs = zip(onnx_scores, river_scores, strict=True)
            risks, policy = [self.policy.combine(o, r, labels) for o, r in pairs], "weighted"
        decisions = [self.policy.decide(risk) for risk in risks]
        names = onnx.features.names
        rule_set = self.rules.current  # read once, like the model: a new set applies from the next batch
        outcomes: Sequence[RuleOutcome | None] = (
            rule_set.evaluate(Batch(txs, matrix, names, risks, onnx_scores, river_scores, decisions))
            if rule_set is not None and txs else [None] * len(txs))
        return [Scored(tx, row, o, r, risk, d if out is None else out.decision, versions, policy, c, names, out)
                for tx, row, o, r, risk, d, c, out in zip(txs, rows, onnx_scores, river_scores, risks, decisions,
                                                          challenger_scores, outcomes, strict=True)]
