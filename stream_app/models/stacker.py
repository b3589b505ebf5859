"""Online stacking: a small River model that learns from labels how to combine the two scores.

Inputs are the logits of the ONNX and River scores plus a few bounded features; plain SGD, no
online scaler (measured: a StandardScaler on logits, or Adam, cost up to half the average
precision). It serves only after ``warmup`` labels; before that the fixed policy decides.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from river import linear_model, optim

from stream_app.domain.entities import MODEL_FEATURES
from stream_app.models.river_batch import learn_logreg
from stream_app.models.river_model import sigmoid

#: feature -> scale: each input stays within a few units, so SGD needs no scaler.
STACKED_FEATURES = {"log_amount": 10.0, "count_1h": 20.0, "first_use_of_merchant": 1.0, "country_changed": 1.0}
_INDEX = [(name, MODEL_FEATURES.index(name), scale) for name, scale in STACKED_FEATURES.items()]
INPUT_NAMES = ("onnx_logit", "river_logit", *STACKED_FEATURES)


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


class Stacker:
    name = "stacker-logreg"

    def __init__(self, warmup: int = 2000) -> None:
        self.model = linear_model.LogisticRegression(optimizer=optim.SGD(0.003))
        self.warmup = warmup
        self.n_learned = 0

    @property
    def ready(self) -> bool:
        return self.n_learned >= self.warmup

    @property
    def version(self) -> str:
        return f"{self.name}@{self.n_learned}"

    @staticmethod
    def inputs(features: Sequence[float], onnx: float, river: float) -> dict[str, float]:
        x = {"onnx_logit": _logit(onnx), "river_logit": _logit(river)}
        x.update({name: min(float(features[i]), scale) / scale for name, i, scale in _INDEX})
        return x

    def predict_proba_one(self, features: Sequence[float], onnx: float, river: float) -> float:
        return float(self.model.predict_proba_one(self.inputs(features, onnx, river)).get(True, 0.0))

    @staticmethod
    def inputs_many(rows: Sequence[Sequence[float]] | np.ndarray, onnx: Sequence[float],
                    river: Sequence[float]) -> np.ndarray:
        """``inputs`` for a micro-batch: one row per event, columns in ``INPUT_NAMES`` order."""
        x = np.asarray(rows, dtype=np.float64)
        p = np.clip(np.asarray([onnx, river], dtype=np.float64), 1e-6, 1 - 1e-6)
        columns = [np.log(p[0] / (1 - p[0])), np.log(p[1] / (1 - p[1]))]
        columns += [np.minimum(x[:, i], scale) / scale for _, i, scale in _INDEX]
        return np.column_stack(columns)

    def predict_proba_many(self, rows: Sequence[Sequence[float]] | np.ndarray, onnx: Sequence[float],
                           river: Sequence[float]) -> list[float]:
        """``predict_proba_one`` for a micro-batch, over numpy arrays (equal within float rounding)."""
        if len(rows) == 0:
            return []
        weights = np.array([self.model.weights.get(name, 0.0) for name in INPUT_NAMES])
        return sigmoid(self.inputs_many(rows, onnx, river) @ weights + self.model.intercept)

    def learn_one(self, features: Sequence[float], scores: dict[str, float], is_fraud: bool) -> None:
        self.model.learn_one(self.inputs(features, scores["onnx"], scores["river"]), bool(is_fraud))
        self.n_learned += 1

    def learn_many(self, rows: Sequence[Sequence[float]], scores: Sequence[dict[str, float]],
                   labels: Sequence[bool]) -> None:
        """``learn_one`` for each example in order, over arrays (``river_batch``; the same bits however the
        examples are cut into calls)."""
        if not rows:
            return
        x = self.inputs_many(rows, [s["onnx"] for s in scores], [s["river"] for s in scores])
        if not learn_logreg(self.model, INPUT_NAMES, x, labels):
            for row, label in zip(x, labels, strict=True):
                self.model.learn_one(dict(zip(INPUT_NAMES, row.tolist(), strict=True)), bool(label))
        self.n_learned += len(rows)
