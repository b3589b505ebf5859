"""Lists of time buckets inside a float64 array, and the compiled loops over them (entity profiles and card states).

A list is a run of rows (index, then one or three values: a count, or a count, a sum and a sum of squares) kept
sorted by index, its length in a slot of its own. Each loop does what the list code it replaced did, in the same
order, so the features computed from the buckets are the same floats.
"""

from __future__ import annotations

import math

import numpy as np
from numba import types

from stream_app.compiled import compiled

_P = types.float64[::1]


@compiled(types.void(_P, types.int64, types.int64, types.int64, types.int64, types.int64, types.float64,
                     types.float64, types.int64))
def add_bucket(p: np.ndarray, base: int, length_at: int, width: int, cap: int, idx: int, value: float,
               square: float, keep_from: int) -> None:
    """Fold ``value`` into the bucket ``idx`` of a sorted list (count += 1 and the sums for width 4; += value for
    width 2), after dropping the buckets before ``keep_from``; a bucket before ``keep_from`` is not added (the list
    code appended it and dropped it at once)."""
    n = before = int(p[length_at])
    drop = 0
    while drop < n and p[base + width * drop] < keep_from:
        drop += 1
    if drop:
        for b in range(drop * width, n * width):
            p[base + b - drop * width] = p[base + b]
        n -= drop
    if idx >= keep_from:
        found = False
        for b in range(n):
            o = base + width * b
            if p[o] == idx:
                if width == 4:
                    p[o + 1] += 1
                    p[o + 2] += value
                    p[o + 3] += square
                else:
                    p[o + 1] += value
                found = True
                break
        if not found:
            if n == cap:  # full (label lists only): the oldest goes
                for b in range(width, n * width):
                    p[base + b - width] = p[base + b]
                n -= 1
            j = n  # kept sorted; buckets come in order but for late events
            while j > 0 and p[base + width * (j - 1)] > idx:
                for f in range(width):
                    p[base + width * j + f] = p[base + width * (j - 1) + f]
                j -= 1
            o = base + width * j
            p[o] = idx
            if width == 4:
                p[o + 1] = 1
                p[o + 2] = value
                p[o + 3] = square
            else:
                p[o + 1] = value
            n += 1
    for b in range(n * width, before * width):  # vacated slots are zero: equal profiles are equal arrays
        p[base + b] = 0.0
    p[length_at] = n


@compiled(types.void(types.float64, types.float64, types.float64, _P, types.int64))
def moments(n: float, s: float, ss: float, out: np.ndarray, at: int) -> None:
    if n == 0:
        out[at] = out[at + 1] = out[at + 2] = 0.0
        return
    mean = s / n
    out[at] = n
    out[at + 1] = mean
    out[at + 2] = math.sqrt(max(0.0, ss / n - mean * mean))


_SIX_SUMS = types.UniTuple(types.float64, 6)  # type: ignore[no-untyped-call]


@compiled(_SIX_SUMS(_P, types.int64, types.int64, types.int64, types.int64, types.int64, types.int64))
def two_windows(p: np.ndarray, base: int, length_at: int, width: int, lo: int, inner_lo: int,
                 hi: int) -> tuple[float, float, float, float, float, float]:
    """(count, sum, sum of squares) of the buckets in [lo, hi], then of those in [inner_lo, hi], in one ascending
    pass (each window adds the same values in the same order as a pass of its own); sums are 0 for width 2."""
    n = s = ss = n_in = s_in = ss_in = 0.0
    for b in range(int(p[length_at])):
        o = base + width * b
        idx = p[o]
        if lo <= idx <= hi:
            n += p[o + 1]
            if width == 4:
                s += p[o + 2]
                ss += p[o + 3]
            if idx >= inner_lo:
                n_in += p[o + 1]
                if width == 4:
                    s_in += p[o + 2]
                    ss_in += p[o + 3]
    return n, s, ss, n_in, s_in, ss_in
