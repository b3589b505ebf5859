"""An entity profile as one float64 array, and the compiled loops that read and fold it.

Why an array: every scored event reads its merchant's profile (about 60 buckets summed over six windows) and folds
itself in; over Python lists of lists that cost ~20 µs an event, in a compiled loop over a flat array ~1 µs
plus the call. The layout is fixed (:data:`WIDTH` floats, 5.3 KB), so copying a profile is one ``copy()``.

Every operation is the list code's it replaced, in the same order (buckets kept sorted by index, folded and
dropped at the same moments, windows summed in ascending index order), so the features are the same floats:
a property test checks them against the definitions over :func:`as_dict`'s view.

Layout: ``first_ts``, ``last_ts`` (NaN: none yet), the transaction count, the distinct-card estimate, then the
lengths of the five bucket lists, then the lists: hour buckets and day buckets (index, count, sum, sum of squares;
at most 24 and 30 are live: older ones are dropped), fraud labels by transaction day, fraud labels by arrival day
and compromise evidence by day (index, value; at most :data:`LABEL_CAP`, the oldest dropped beyond), and the 64
HyperLogLog registers.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
from numba import types

from stream_app.compiled import compiled
from stream_app.domain.buckets import add_bucket, moments, two_windows

FIRST, LAST, N, DISTINCT = 0, 1, 2, 3
N_HOURS, N_DAYS, N_FRAUD_TX, N_FRAUD_ARRIVED, N_COMPROMISE = 4, 5, 6, 7, 8
HOUR_CAP: Final = 24  # hour buckets live at once (the last 24 hours)
DAY_CAP: Final = 30  # day buckets live at once (the last 30 days)
LABEL_CAP: Final = 64  # buckets of a label list (30 days are live; arrivals out of order can leave more a while)
HOURS: Final = 16  # HOUR_CAP x (index, n, sum, sum of squares)
DAYS: Final = HOURS + HOUR_CAP * 4  # DAY_CAP x the same
FRAUD_TX: Final = DAYS + DAY_CAP * 4  # LABEL_CAP x (day, count)
FRAUD_ARRIVED: Final = FRAUD_TX + LABEL_CAP * 2
COMPROMISE: Final = FRAUD_ARRIVED + LABEL_CAP * 2
HLL: Final = COMPROMISE + LABEL_CAP * 2  # 64 registers
WIDTH: Final = HLL + 64
N_ENTITY_FEATURES: Final = 24

_P = types.float64[::1]
_HOUR_MS = 3_600_000
_DAY_MS = 86_400_000


def new_array() -> np.ndarray:
    p = np.zeros(WIDTH)
    p[FIRST] = p[LAST] = np.nan
    return p


@compiled(types.void(_P, types.int64, types.float64, types.int64, types.int64))
def observe(p: np.ndarray, ts: int, amount: float, hll_idx: int, hll_rank: int) -> None:
    """A scored transaction (``hll_idx``, ``hll_rank``: its card's HyperLogLog register and rank)."""
    newest = float(ts) if math.isnan(p[LAST]) else max(p[LAST], float(ts))
    if math.isnan(p[FIRST]) or ts < p[FIRST]:
        p[FIRST] = ts
    p[LAST] = newest
    p[N] += 1
    add_bucket(p, HOURS, N_HOURS, 4, HOUR_CAP, ts // _HOUR_MS, amount, amount * amount, int(newest) // _HOUR_MS - 23)
    add_bucket(p, DAYS, N_DAYS, 4, DAY_CAP, ts // _DAY_MS, amount, amount * amount, int(newest) // _DAY_MS - 29)
    if hll_rank > p[HLL + hll_idx]:  # only then can the estimate change; features read it on every event
        p[HLL + hll_idx] = hll_rank
        inverse_sum = 0.0
        zeros = 0
        for r in range(64):
            inverse_sum += 2.0 ** -p[HLL + r]
            if p[HLL + r] == 0:
                zeros += 1
        estimate = 0.709 * 64 * 64 / inverse_sum
        p[DISTINCT] = 64 * math.log(64 / zeros) if estimate <= 2.5 * 64 and zeros else estimate


@compiled(types.void(_P, types.int64, types.int64))
def learn_fraud(p: np.ndarray, tx_ts: int, arrived_ms: int) -> None:
    """A fraud label for a transaction of ``tx_ts`` arrived at ``arrived_ms``."""
    newest = max(tx_ts, arrived_ms, 0 if math.isnan(p[LAST]) else int(p[LAST]))
    keep_from = newest // _DAY_MS - 29
    add_bucket(p, FRAUD_TX, N_FRAUD_TX, 2, LABEL_CAP, tx_ts // _DAY_MS, 1.0, 0.0, keep_from)
    add_bucket(p, FRAUD_ARRIVED, N_FRAUD_ARRIVED, 2, LABEL_CAP, arrived_ms // _DAY_MS, 1.0, 0.0, keep_from)


@compiled(types.void(_P, types.int64, types.float64))
def add_compromise(p: np.ndarray, arrived_ms: int, weight: float) -> None:
    day = arrived_ms // _DAY_MS
    add_bucket(p, COMPROMISE, N_COMPROMISE, 2, LABEL_CAP, day, weight, 0.0, day - 29)


@compiled(types.void(_P, types.int64, types.int64, types.int64, _P, types.int64))
def _recent_sums(p: np.ndarray, base: int, length_at: int, day: int, out: np.ndarray, at: int) -> None:
    """The list's values summed over the last 1, 7 and 30 days up to ``day`` (later days not counted)."""
    one = seven = thirty = 0.0
    for b in range(int(p[length_at])):
        idx, value = p[base + 2 * b], p[base + 2 * b + 1]
        if day - 30 < idx <= day:
            thirty += value
            if idx > day - 7:
                seven += value
                if idx == day:
                    one += value
    out[at], out[at + 1], out[at + 2] = one, seven, thirty


@compiled(types.void(_P, types.int64, types.float64, types.int64, types.float64, types.int64, types.int64,
                     types.float64, types.float64, _P))
def features(p: np.ndarray, ts: int, prior_rate: float, maturity_days: int, prior_weight: float, short: int,
             long: int, keep_days: float, n_cap: float, out: np.ndarray) -> None:
    """The profile's features for a transaction at ``ts`` into ``out`` (see profiles.feature_names)."""
    hour, day = ts // _HOUR_MS, ts // _DAY_MS
    n24, s24, ss24, n1, s1, ss1 = two_windows(p, HOURS, N_HOURS, 4, hour - 23, hour, hour)  # 1 h: the hour bucket
    n30, s30, ss30, n7, s7, ss7 = two_windows(p, DAYS, N_DAYS, 4, day - 29, day - 6, day)
    # shares over mature transactions: days [day - w, day - maturity]
    mature_to = day - maturity_days
    mature_long, _, _, mature_short, _, _ = two_windows(p, DAYS, N_DAYS, 4, day - long, day - short, mature_to)
    frauds_long, _, _, frauds_short, _, _ = two_windows(p, FRAUD_TX, N_FRAUD_TX, 2, day - long, day - short,
                                                         mature_to)
    moments(n1, s1, ss1, out, 0)
    moments(n24, s24, ss24, out, 3)
    moments(n7, s7, ss7, out, 6)
    moments(n30, s30, ss30, out, 9)
    distinct = p[DISTINCT]
    out[12] = distinct
    # age and count saturate: past the windows' 30 days, or a thousand transactions, a profile is established
    out[13] = 0.0 if math.isnan(p[FIRST]) else min(keep_days, max(0.0, (ts - p[FIRST]) / _DAY_MS))
    out[14] = min(p[N], n_cap)
    _recent_sums(p, FRAUD_ARRIVED, N_FRAUD_ARRIVED, day, out, 15)  # arrived on the event's day or before
    prior = prior_weight * prior_rate
    out[18] = (frauds_short + prior) / (mature_short + prior_weight)
    out[19] = (frauds_long + prior) / (mature_long + prior_weight)
    _recent_sums(p, COMPROMISE, N_COMPROMISE, day, out, 20)
    out[23] = out[22] / max(distinct, 1.0)  # a common stop of every card is no suspect; a skimmer's share is high
