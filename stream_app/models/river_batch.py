"""River's own ``learn_one`` arithmetic applied to a batch of labeled rows, in order, over numpy arrays.

Why: a label costs ~65 µs through River's per-example dicts (scaler, gradient, optimizer, each a dict
pass over 50 features), which caps a worker at ~15k labels/s. Here the same sequential updates (Welford
scaler statistics, then the log-loss gradient, the intercept's step and the optimizer's step, one row after
the other) run on arrays read from the River objects' learned state and are written back into them, so the
model stays the River pipeline that predicts, is checkpointed and is inspected as before. Results equal
``learn_one``'s within float rounding (the dot product's summation order, numpy's square root); a unit test
checks thousands of rows against it. Every step is per row and element-wise, so the result does not depend on
how the rows are cut into batches: workers that fetch the examples log in different slices hold bit-identical
models (also tested). Pipelines of another shape return ``False`` and are taught row by row by the caller.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from river import compose, linear_model, optim, preprocessing, utils


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
    means, variances = np.empty_like(rows), np.empty_like(rows)  # each row's statistics after its update
    diff, tmp = np.empty(len(names)), np.empty(len(names))
    for x, mean_after, var_after in zip(rows, means, variances, strict=True):  # StandardScaler.learn_one's Welford
        counts += 1.0  # update, element by element
        np.subtract(x, mean, out=diff)
        np.divide(diff, counts, out=tmp)
        mean = np.add(mean, tmp, out=mean_after)
        np.subtract(x, mean, out=tmp)
        tmp *= diff
        tmp -= var
        tmp /= counts
        var = np.add(var, tmp, out=var_after)
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
    clip = model.clip_gradient
    l2 = model.l2
    squares = rows * rows
    buffer = np.empty(len(names))
    for x, x2, y in zip(rows, squares, labels, strict=True):
        lg = _log_loss_gradient(loss, bool(y), float(w @ x) + b)
        lg = float(min(max(lg, -clip), clip))
        b -= intercept_rate * lg
        if l2:
            g = x * lg + l2 * w
            x2 = g * g
            x, lg = g, 1.0
        if adam:  # m and v are the moving averages of g = lg*x and of g², as River's Adam keeps them
            m *= opt.beta_1
            m += ((1 - opt.beta_1) * lg) * x
            v *= opt.beta_2
            v += ((1 - opt.beta_2) * lg * lg) * x2
            np.sqrt(v, out=buffer)
            buffer += opt.eps
            np.divide(m, buffer, out=buffer)
            buffer *= rate * (1 - opt.beta_2 ** (t + 1)) ** 0.5 / (1 - opt.beta_1 ** (t + 1))
            w -= buffer
        else:
            w -= (rate * lg) * x
        t += 1
    model._weights = utils.VectorDict(dict(zip(names, w.tolist(), strict=True)))  # noqa: SLF001 (no public setter)
    if adam:
        opt.m = utils.VectorDict(dict(zip(names, m.tolist(), strict=True)))
        opt.v = utils.VectorDict(dict(zip(names, v.tolist(), strict=True)))
    opt.n_iterations = t
    model.intercept = b


def _log_loss_gradient(loss: optim.losses.Log, y: bool, raw: float) -> float:
    """River's ``Log.gradient`` for one row (the same branches, so the same floats)."""
    sign, weight = (1, loss.weight_pos) if y else (-1, loss.weight_neg)
    z = raw * sign
    if z > 18.0:
        return float(weight * math.exp(-z) * -sign)
    if z < -18.0:
        return float(weight * -sign)
    return float(weight * -sign / (math.exp(z) + 1.0))


def _vector(values: object, names: Sequence[str]) -> np.ndarray:
    """A learned per-feature quantity in feature order (0 where nothing was learned, as River reads it)."""
    get = values.get  # type: ignore[attr-defined]
    return np.array([get(name, 0.0) for name in names], dtype=np.float64)
