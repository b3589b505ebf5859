"""Compiled loops (numba) for the arithmetic that must run row after row: online learning is sequential.

Why compiled: River's update of one row is a dozen element-wise passes over ~50 features; through numpy each pass
costs a call (~1 µs), so a label cost ~10 µs of learning. The same arithmetic in a compiled loop costs ~0.4 µs a
row. The operations and their order are those of River's ``learn_one`` (and of the numpy code this replaced),
so the results equal River's within float rounding; :mod:`stream_app.models.river_batch` reads and writes the
River objects' state around these loops.

Compiled at import, cached where numba can write: see :mod:`stream_app.compiled`.
"""

from __future__ import annotations

import math

import numpy as np
from numba import types

from stream_app.compiled import compiled

_ROWS = types.float64[:, :]
_VECTOR = types.float64[:]


@compiled(types.void(_ROWS, _VECTOR, _VECTOR, _VECTOR, _ROWS, _ROWS))
def welford(rows: np.ndarray, counts: np.ndarray, mean: np.ndarray, var: np.ndarray, means_out: np.ndarray,
            vars_out: np.ndarray) -> None:
    """StandardScaler.learn_one for each row in order (Welford's update), ``counts``, ``mean``, ``var`` updated in
    place; ``means_out``/``vars_out`` get each row's statistics after its update (the row is scaled with them)."""
    n, d = rows.shape
    for i in range(n):
        for j in range(d):
            x = rows[i, j]
            count = counts[j] + 1.0
            counts[j] = count
            diff = x - mean[j]
            new_mean = mean[j] + diff / count
            mean[j] = new_mean
            var[j] = var[j] + ((x - new_mean) * diff - var[j]) / count
            means_out[i, j] = new_mean
            vars_out[i, j] = var[j]


@compiled(types.Tuple((types.float64, types.int64))(
    _ROWS, types.boolean[:], _VECTOR, _VECTOR, _VECTOR, types.float64, types.int64, types.float64, types.float64,
    types.float64, types.float64, types.boolean, types.float64, types.float64, types.float64, types.float64,
    types.float64))
def logistic_steps(rows: np.ndarray, labels: np.ndarray, w: np.ndarray, m: np.ndarray, v: np.ndarray,
                   intercept: float, t: int, rate: float, intercept_rate: float, clip: float, l2: float, adam: bool,
                   beta_1: float, beta_2: float, eps: float, weight_pos: float, weight_neg: float) -> tuple[float, int]:
    """LogisticRegression.learn_one (log loss, L2, Adam or SGD at constant rates) for each row in order: ``w``
    and the optimizer's moments ``m``, ``v`` updated in place; returns the intercept and the iteration count."""
    n, d = rows.shape
    for i in range(n):
        raw = 0.0
        for j in range(d):
            raw += w[j] * rows[i, j]
        raw += intercept
        # River's Log.gradient, its branches as they are
        sign, weight = (1.0, weight_pos) if labels[i] else (-1.0, weight_neg)
        z = raw * sign
        if z > 18.0:
            lg = weight * math.exp(-z) * -sign
        elif z < -18.0:
            lg = weight * -sign
        else:
            lg = weight * -sign / (math.exp(z) + 1.0)
        lg = min(max(lg, -clip), clip)
        intercept -= intercept_rate * lg
        step = rate * (1 - beta_2 ** (t + 1)) ** 0.5 / (1 - beta_1 ** (t + 1)) if adam else rate
        for j in range(d):
            g = rows[i, j] * lg + l2 * w[j] if l2 != 0.0 else rows[i, j] * lg
            if adam:  # m and v: the moving averages of g and g², as River's Adam keeps them
                m[j] = beta_1 * m[j] + (1 - beta_1) * g
                v[j] = beta_2 * v[j] + (1 - beta_2) * (g * g)
                w[j] -= step * m[j] / (math.sqrt(v[j]) + eps)
            else:
                w[j] -= step * g
        t += 1
    return intercept, t
