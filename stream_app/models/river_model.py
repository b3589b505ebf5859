"""The online model: a River pipeline that learns one labeled feature vector at a time."""

from __future__ import annotations

from collections.abc import Sequence

from river import compose, linear_model, optim, preprocessing

from stream_app.features import FEATURE_NAMES


def default_pipeline() -> compose.Pipeline:
    """Scaled logistic regression with Adam: the best of benchmarks/river_models.py (see README)."""
    return compose.Pipeline(
        preprocessing.StandardScaler(),
        linear_model.LogisticRegression(optimizer=optim.Adam(0.001)),
    )


class RiverScorer:
    """Online scorer; its version says how many labels it has learned."""

    name = "river-logreg"

    def __init__(self, model: compose.Pipeline | None = None, n_learned: int = 0) -> None:
        self.model = model if model is not None else default_pipeline()
        self.n_learned = n_learned

    @property
    def version(self) -> str:
        return f"{self.name}@{self.n_learned}"

    @staticmethod
    def as_dict(features: Sequence[float]) -> dict[str, float]:
        return dict(zip(FEATURE_NAMES, features, strict=True))

    def predict_proba_one(self, features: Sequence[float]) -> float:
        return float(self.model.predict_proba_one(self.as_dict(features)).get(True, 0.0))

    def predict_proba_many(self, rows: Sequence[Sequence[float]]) -> list[float]:
        return [self.predict_proba_one(r) for r in rows]

    def learn_one(self, features: Sequence[float], is_fraud: bool) -> None:
        self.model.learn_one(self.as_dict(features), bool(is_fraud))
        self.n_learned += 1
