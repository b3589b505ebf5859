"""River's own ``learn_one`` arithmetic applied to a batch of labeled rows, in order, over arrays.

Why: a label costs ~65 µs through River's per-example dicts (scaler, gradient, optimizer, each a dict
pass over 50 features), which caps a worker at ~15k labels/s. Here the same sequential updates (Welford
scaler statistics, then the log-loss gradient, the intercept's step and the optimizer's step, one row after
the other) run in compiled loops (:mod:`stream_app.models.kernels`) on arrays read from the River objects'
learned state, and are written back into them, so the model stays the River pipeline that predicts, is
checkpointed and is inspected as before. Results equal ``learn_one``'s within float rounding (the dot product's
summation order); a unit test checks thousands of rows against it. Every step is per row and element-wise, so the
result does not depend on how the rows are cut into batches: workers that fetch the examples log in different
slices hold bit-identical models (also tested). Pipelines of another shape return ``False`` and are taught row by
row by the caller.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from river import compose, linear_model, optim, preprocessing, utils

from stream_app.models import kernels


def learn_scaled_logreg(pipeline: compose.Pipeline, names: Sequence[str], rows: np.ndarray,
                        labels: Sequence[bool]) -> bool:
    """``pipeline.learn_one`` for each row in order, for StandardScaler | LogisticRegression."""
    steps = list(pipeline.steps.values())
    if len(steps) != 2:
        return False
    scaler, model = steps
    if not (isinstance(scaler, preprocessing.StandardScaler) and scaler.with_std and scaler.window_size is None
            and _supported(model)):
        return False
    counts = np.array([scaler.counts.get(n, 0) for n in names], dtype=np.float64)
    mean = _vector(scaler.means, names)
    var = _vector(scaler.vars, names)
    rows = np.asarray(rows, dtype=np.float64)
    means, variances = np.empty_like(rows), np.empty_like(rows)  # each row's statistics after its update
    kernels.welford(rows, counts, mean, var, means, variances)
    # then transform_one of each row on its new statistics (0 where the variance is 0), all rows at once: the
    # same element-wise arithmetic, so the same floats, as row by row
    scaled = rows - means
    known = variances != 0
    np.divide(scaled, np.sqrt(variances), out=scaled, where=known)
    scaled[~known] = 0.0
    _learn(model, names, scaled, labels)
    for name, c, m, v in zip(names, counts, mean, var, strict=True):
        scaler.counts[name] = int(c)
        scaler.means[name] = float(m)
        scaler.vars[name] = float(v)
    return True


def learn_logreg(model: linear_model.LogisticRegression, names: Sequence[str], rows: np.ndarray,
                 labels: Sequence[bool]) -> bool:
    """``model.learn_one`` for each row in order (no scaler in front)."""
    if not _supported(model):
        return False
    _learn(model, names, rows, labels)
    return True


def _supported(model: object) -> bool:
    """The shapes whose arithmetic is reproduced here: log loss, no L1, Adam or SGD, constant rates."""
    if type(model) is not linear_model.LogisticRegression:
        return False
    opt = model.optimizer
    return (type(model.loss) is optim.losses.Log and model.l1 == 0
            and type(opt) in (optim.Adam, optim.SGD) and type(opt.lr) is optim.schedulers.Constant
            and type(model.intercept_lr) is optim.schedulers.Constant)


def _learn(model: linear_model.LogisticRegression, names: Sequence[str], rows: np.ndarray,
           labels: Sequence[bool]) -> None:
    opt = model.optimizer
    adam = type(opt) is optim.Adam
    loss = model.loss
    w = _vector(model.weights, names)
    m = _vector(opt.m, names) if adam and opt.m is not None else np.zeros(len(names))
    v = _vector(opt.v, names) if adam and opt.v is not None else np.zeros(len(names))
    t = opt.n_iterations
    b = float(model.intercept)
    rate = float(opt.lr.learning_rate)
    intercept_rate = float(model.intercept_lr.learning_rate)
    beta_1, beta_2, eps = (float(opt.beta_1), float(opt.beta_2), float(opt.eps)) if adam else (0.0, 0.0, 0.0)
    b, t = kernels.logistic_steps(np.asarray(rows, dtype=np.float64), np.asarray(labels, dtype=np.bool_), w, m, v,
                                  b, t, rate, intercept_rate, float(model.clip_gradient), float(model.l2), adam,
                                  beta_1, beta_2, eps, float(loss.weight_pos), float(loss.weight_neg))
    model._weights = utils.VectorDict(dict(zip(names, w.tolist(), strict=True)))  # noqa: SLF001 (no public setter)
    if adam:
        opt.m = utils.VectorDict(dict(zip(names, m.tolist(), strict=True)))
        opt.v = utils.VectorDict(dict(zip(names, v.tolist(), strict=True)))
    opt.n_iterations = t
    model.intercept = b


def _vector(values: object, names: Sequence[str]) -> np.ndarray:
    """A learned per-feature quantity in feature order (0 where nothing was learned, as River reads it)."""
    get = values.get  # type: ignore[attr-defined]
    return np.array([get(name, 0.0) for name in names], dtype=np.float64)
