from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_app.domain.decision import Policy, ReasonModel
from stream_app.domain.entities import MODEL_FEATURES

probability = st.floats(0, 1, allow_nan=False)


def test_river_has_no_say_before_it_has_learned() -> None:
    p = Policy(river_max_weight=0.4, river_warmup_labels=1000)
    assert p.combine(0.9, 0.0, river_labels=0) == pytest.approx(0.9)
    assert p.combine(0.9, 0.0, river_labels=500) == pytest.approx(0.9 * 0.8)
    assert p.combine(0.9, 0.0, river_labels=10**6) == pytest.approx(0.9 * 0.6)


def test_thresholds() -> None:
    p = Policy(review_threshold=0.5, decline_threshold=0.8)
    assert [p.decide(r) for r in (0.0, 0.49, 0.5, 0.79, 0.8, 1.0)] == [
        "approve", "approve", "review", "review", "decline", "decline"]


@given(probability, probability, st.integers(0, 10**6))
def test_combined_risk_stays_between_the_two_scores(onnx: float, river: float, labels: int) -> None:
    risk = Policy().combine(onnx, river, labels)
    assert min(onnx, river) - 1e-12 <= risk <= max(onnx, river) + 1e-12


@given(probability)
def test_decisions_are_monotone_in_risk(risk: float) -> None:
    order = {"approve": 0, "review": 1, "decline": 2}
    p = Policy()
    assert order[p.decide(risk)] <= order[p.decide(min(1.0, risk + 0.1))]


def test_reasons_name_the_features_on_the_fraud_side() -> None:
    n = len(MODEL_FEATURES)
    stats = {name: {"legit_mean": 0.0, "legit_std": 1.0, "fraud_mean": 1.0, "importance": 1.0 / n}
             for name in MODEL_FEATURES}
    stats["seconds_since_prev"]["fraud_mean"] = -1.0  # fraud is faster than usual
    reasons = ReasonModel.from_card({"feature_stats": stats})
    row = [0.0] * n
    row[MODEL_FEATURES.index("amount_eur")] = 5.0
    row[MODEL_FEATURES.index("seconds_since_prev")] = -3.0
    row[MODEL_FEATURES.index("card_fraud_labels_30d")] = 4.0  # an entity feature can be a reason too
    row[MODEL_FEATURES.index("count_1h")] = -2.0  # below the legit mean: not a reason
    row[MODEL_FEATURES.index("merchant_fraud_share_30d")] = -1.0  # likewise
    top = reasons.top_reasons(row)
    assert [r["feature"] for r in top] == ["amount_eur", "card_fraud_labels_30d", "seconds_since_prev"]
    assert [r["text"] for r in top] == ["amount eur = 5", "card fraud labels 30d = 4", "seconds since prev = -3"]
