"""Batch learning (stream_app.models.river_batch) against River's own learn_one, row by row."""

from __future__ import annotations

import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from river import compose, linear_model, optim, preprocessing

from stream_app.domain.entities import MODEL_FEATURES
from stream_app.domain.learning import Example, OnlineLearner, PrequentialMetrics
from stream_app.models.river_model import RiverScorer
from stream_app.models.stacker import Stacker


def _rows(n: int, seed: int) -> tuple[list[list[float]], list[bool]]:
    rng = random.Random(seed)
    width = len(MODEL_FEATURES)
    # columns of several kinds: constant 0 (variance stays 0), flags, counts, large amounts
    rows = [[0.0 if j % 11 == 0 else float(rng.random() < 0.2) if j % 5 == 0 else
             rng.lognormvariate(4, 1.5) if j % 3 == 0 else rng.gauss(2, 1) for j in range(width)]
            for _ in range(n)]
    return rows, [rng.random() < 0.15 for _ in range(n)]


def _close(a: list[float], b: list[float]) -> bool:
    return bool(np.allclose(a, b, rtol=1e-9, atol=1e-12))


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(1, 399), max_size=12), seed=st.integers(0, 2**16), warm=st.integers(0, 30))
def test_learn_many_equals_learn_one_row_by_row(cuts: list[int], seed: int, warm: int) -> None:
    rows, labels = _rows(400, seed)
    one, many = RiverScorer(), RiverScorer()
    for row, y in zip(rows[:warm], labels[:warm], strict=True):  # state learned one by one first
        one.learn_one(row, y)
        many.learn_one(row, y)
    for row, y in zip(rows[warm:], labels[warm:], strict=True):
        one.learn_one(row, y)
    bounds = [warm, *sorted(c for c in set(cuts) if c > warm), 400]
    for a, b in zip(bounds, bounds[1:], strict=False):
        many.learn_many(rows[a:b], labels[a:b])
    assert many.n_learned == one.n_learned == 400
    assert _close(many.predict_proba_many(rows[:50]), one.predict_proba_many(rows[:50]))
    scaler_one, lr_one = one.model.steps.values()
    scaler_many, lr_many = many.model.steps.values()
    assert dict(scaler_many.counts) == dict(scaler_one.counts)
    for name in MODEL_FEATURES:
        assert np.isclose(scaler_many.means[name], scaler_one.means[name], rtol=1e-9, atol=1e-12)
        assert np.isclose(scaler_many.vars[name], scaler_one.vars[name], rtol=1e-9, atol=1e-12)
        assert np.isclose(lr_many.weights[name], lr_one.weights[name], rtol=1e-7, atol=1e-12)
    assert lr_many.optimizer.n_iterations == lr_one.optimizer.n_iterations
    assert np.isclose(lr_many.intercept, lr_one.intercept, rtol=1e-9)
    # learning goes on one by one from what the batches left (the optimizer's moments included)
    more, more_labels = _rows(30, seed + 1)
    for row, y in zip(more, more_labels, strict=True):
        one.learn_one(row, y)
        many.learn_one(row, y)
    assert _close(many.predict_proba_many(more), one.predict_proba_many(more))


def test_stacker_learn_many_equals_learn_one() -> None:
    rows, labels = _rows(300, 5)
    rng = random.Random(6)
    scores = [{"onnx": rng.random(), "river": rng.choice([0.0, 1.0, rng.random()])} for _ in rows]
    one, many = Stacker(10), Stacker(10)
    for row, s, y in zip(rows, scores, labels, strict=True):
        one.learn_one(row, s, y)
    for a in range(0, 300, 37):
        many.learn_many(rows[a:a + 37], scores[a:a + 37], labels[a:a + 37])
    assert many.n_learned == one.n_learned == 300
    onnx, river = [s["onnx"] for s in scores[:40]], [s["river"] for s in scores[:40]]
    assert _close(many.predict_proba_many(rows[:40], onnx, river), one.predict_proba_many(rows[:40], onnx, river))
    assert _close([one.predict_proba_one(r, o, v) for r, o, v in zip(rows[:40], onnx, river, strict=True)],
                  one.predict_proba_many(rows[:40], onnx, river))


def test_a_pipeline_of_another_shape_is_taught_row_by_row() -> None:
    rows, labels = _rows(60, 9)
    shape = compose.Pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression(optim.RMSProp()))
    one = RiverScorer(shape)
    many = RiverScorer(shape.clone())
    for row, y in zip(rows, labels, strict=True):
        one.learn_one(row, y)
    many.learn_many(rows, labels)
    assert many.predict_proba_many(rows[:10]) == one.predict_proba_many(rows[:10])


def test_apply_many_equals_apply_one_at_a_time() -> None:
    rows, labels = _rows(200, 11)
    examples = [Example(f"tx-{i}", row, y, {"onnx": 0.3, "river": 0.4}, "chargeback", 0)
                for i, (row, y) in enumerate(zip(rows, labels, strict=True))]
    examples[17] = Example("tx-narrow", rows[17][:10], True, {"onnx": 0.9, "river": 0.8}, "chargeback", 0)
    one = OnlineLearner(RiverScorer(), Stacker(10), PrequentialMetrics())
    many = OnlineLearner(RiverScorer(), Stacker(10), PrequentialMetrics())
    for offset, ex in enumerate(examples):
        one.apply(ex, offset)
    items = list(enumerate(examples))
    many.apply_many([(ex, offset) for offset, ex in items[:120]])
    many.apply_many([(ex, offset) for offset, ex in items[100:]])  # 100..119 again: a redelivery, ignored
    assert many.offset == one.offset == 199
    assert many.other_feature_set == one.other_feature_set == 1
    assert many.river.n_learned == one.river.n_learned == 199
    assert many.metrics.snapshot() == one.metrics.snapshot()
    assert _close(many.river.predict_proba_many(rows[:20]), one.river.predict_proba_many(rows[:20]))


@settings(max_examples=20, deadline=None)
@given(cuts_a=st.lists(st.integers(1, 299), max_size=10), cuts_b=st.lists(st.integers(1, 299), max_size=10),
       seed=st.integers(0, 2**16))
def test_the_same_rows_cut_differently_give_bit_identical_models(cuts_a: list[int], cuts_b: list[int],
                                                                 seed: int) -> None:
    """Workers fetch the examples log in slices of their own: their models must still be equal, bit for bit."""
    rows, labels = _rows(300, seed)
    rng = random.Random(seed)
    scores = [{"onnx": rng.random(), "river": rng.random()} for _ in rows]
    models = []
    for cuts in (cuts_a, cuts_b):
        river, stacker = RiverScorer(), Stacker(10)
        bounds = [0, *sorted(set(cuts)), 300]
        for a, b in zip(bounds, bounds[1:], strict=False):
            river.learn_many(rows[a:b], labels[a:b])
            stacker.learn_many(rows[a:b], scores[a:b], labels[a:b])
        scaler, lr = river.model.steps.values()
        models.append((dict(scaler.means), dict(scaler.vars), lr.weights, lr.intercept, dict(lr.optimizer.m),
                       dict(lr.optimizer.v), stacker.model.weights, stacker.model.intercept))
    assert models[0] == models[1]
