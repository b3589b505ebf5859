"""A card's feature state as one float64 array, and the compiled loops that check, read and fold it.

Why an array: every event reads and updates its card's state (the exact 1 h window, hour and day buckets, the
merchants it paid at, the tx_ids it has seen); over Python lists of lists and JSON that cost ~30 µs an event
with the stored form's decoding and encoding, over a flat array in compiled loops a few µs. What is not a number
stays in Python beside the array (:class:`stream_app.domain.features.CardState`): the last country and the
merchant ids, one per merchant *slot* of the array.

Every operation is the list code's it replaced, in the same order (lists kept sorted by time, a late event
inserted after the entries of its time or earlier, windows summed in ascending order, entries dropped at the same
moments), so the features are the same floats: a test replays a stream through both.

Layout: the scalars (last and first event time, NaN: none yet; the lists' lengths; the merchant use counter),
then the lists: the last hour's transactions (time, amount), hour and day buckets (index, count, sum, sum of
squares), the seen tx_id digests (high and low 32 bits, time) and the merchant slots (last visit, NaN: free; use
number, for least-recently-used eviction). :func:`pack` keeps only the used rows: the stored form.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
from numba import types

from stream_app.compiled import compiled
from stream_app.domain.buckets import add_bucket, moments, two_windows

RECENT_CAP: Final = 64  # transactions kept for the exact 1 h window
MERCHANT_CAP: Final = 32  # merchants remembered per card (LRU), for first-use and distinct-1d
SEEN_CAP: Final = 128  # tx_id digests remembered per card for de-duplication
HOUR_CAP: Final = 24
DAY_CAP: Final = 30
HOUR_MS: Final = 3_600_000
DAY_MS: Final = 24 * HOUR_MS
MERCHANT_HORIZON_MS: Final = 30 * DAY_MS
NO_PREVIOUS_S: Final = 30 * 86_400.0  # "seconds since previous" for a card's first transaction
N_FEATURES: Final = 24

LAST, FIRST, N_RECENT, N_HOURS, N_DAYS, N_SEEN, N_SLOTS, USES = range(8)
RECENT: Final = 8  # (RECENT_CAP + 1) x (ts, amount): room for the insert before the trim
HOURS: Final = RECENT + (RECENT_CAP + 1) * 2  # HOUR_CAP x (index, n, sum, sum of squares)
DAYS: Final = HOURS + HOUR_CAP * 4  # DAY_CAP x the same
SEEN: Final = DAYS + DAY_CAP * 4  # (SEEN_CAP + 1) x (digest's high 32 bits, low 32 bits, ts)
MERCH: Final = SEEN + (SEEN_CAP + 1) * 3  # MERCHANT_CAP x (last visit, use number)
WIDTH: Final = MERCH + MERCHANT_CAP * 2

OK, DUPLICATE, LATE, FORGOTTEN = 0, 1, 2, 3  # what check() finds
_LISTS: Final = ((RECENT, N_RECENT, 2), (HOURS, N_HOURS, 4), (DAYS, N_DAYS, 4), (SEEN, N_SEEN, 3),
                 (MERCH, N_SLOTS, 2))

_P = types.float64[::1]


def new_array() -> np.ndarray:
    v = np.zeros(WIDTH)
    v[LAST] = v[FIRST] = np.nan
    return v


@compiled(types.int64(_P, types.int64, types.int64, types.int64, types.int64))
def check(v: np.ndarray, ts: int, hi: int, lo: int, horizon_ms: int) -> int:
    """Whether the card has this tx_id (digest ``hi``, ``lo``) already, or the event is too old to tell."""
    n = int(v[N_SEEN])
    for i in range(n):
        o = SEEN + 3 * i
        if v[o] == hi and v[o + 1] == lo:
            return DUPLICATE
    if not math.isnan(v[LAST]) and ts < int(v[LAST]) - horizon_ms:
        return LATE
    if n >= SEEN_CAP and ts < v[SEEN + 2]:
        return FORGOTTEN
    return OK


@compiled(types.void(_P, types.int64, types.float64, types.int64, _P))
def features(v: np.ndarray, ts: int, amount: float, slot: int, out: np.ndarray) -> None:
    """The card's numeric features for a transaction at ``ts`` (``slot``: its merchant's slot, -1: none) into
    ``out``, by features.FEATURE_NAMES; the country and channel flags are left to the caller."""
    n1 = s1 = ss1 = 0.0
    for i in range(int(v[N_RECENT])):
        t, a = v[RECENT + 2 * i], v[RECENT + 2 * i + 1]
        if ts - HOUR_MS < t <= ts:
            n1 += 1
            s1 += a
            ss1 += a * a
    hour, day = ts // HOUR_MS, ts // DAY_MS
    n24, s24, ss24, _, _, _ = two_windows(v, HOURS, N_HOURS, 4, hour - 23, hour, hour)
    n30, s30, ss30, n7, s7, ss7 = two_windows(v, DAYS, N_DAYS, 4, day - 29, day - 6, day)
    out[0] = amount
    out[1] = math.log1p(amount)
    out[2] = float(hour % 24)
    out[3] = float((day + 3) % 7)  # 1970-01-01 was a Thursday; Monday = 0
    moments(n1, s1, ss1, out, 4)
    moments(n24, s24, ss24, out, 7)
    moments(n7, s7, ss7, out, 10)
    moments(n30, s30, ss30, out, 13)
    # The amount against the card's 30 d mean is 1.0 ("as usual") when there is no spending to compare with,
    # no history or only zero-amount card verifications, as for a card's first payment. A ratio to a zero
    # mean is infinite, and any floor under it would make an arbitrary huge value that swamps the online
    # model's running scaler. A positive mean is no denormal (the parser refuses amounts in (0, 0.001)),
    # so the ratio to it is finite.
    out[17] = amount / out[14] if out[14] > 0 else 1.0
    since = NO_PREVIOUS_S if math.isnan(v[LAST]) else max(0.0, (ts - int(v[LAST])) / 1000.0)
    out[16] = min(since, NO_PREVIOUS_S)
    merchants_1d = 0
    for s in range(int(v[N_SLOTS])):
        t = v[MERCH + 2 * s]
        if ts - DAY_MS < t <= ts:  # False for a free slot's NaN
            merchants_1d += 1
    out[18] = float(merchants_1d)
    out[19] = 0.0 if slot >= 0 and v[MERCH + 2 * slot] <= ts else 1.0


@compiled(types.int64(_P, types.int64, types.int64, types.int64, types.int64, types.float64))
def _insert_sorted(v: np.ndarray, base: int, length_at: int, width: int, time_at: int, ts: float) -> int:
    """Make room for a row of time ``ts`` (the row's value at ``time_at``) after every row of that time or
    earlier, where a stable sort would put it; returns the row's offset."""
    j = int(v[length_at])
    while j > 0 and v[base + width * (j - 1) + time_at] > ts:
        for f in range(width):
            v[base + width * j + f] = v[base + width * (j - 1) + f]
        j -= 1
    v[length_at] += 1
    return base + width * j


@compiled(types.void(_P, types.int64, types.int64, types.int64, types.int64))
def _drop_front(v: np.ndarray, base: int, width: int, length_at: int, drop: int) -> None:
    """Drop the first ``drop`` rows; vacated slots are zero, so equal states are equal arrays."""
    n = int(v[length_at])
    if drop <= 0:
        return
    for b in range(drop * width, n * width):
        v[base + b - drop * width] = v[base + b]
    for b in range((n - drop) * width, n * width):
        v[base + b] = 0.0
    v[length_at] = n - drop


@compiled(types.int64(_P, types.int64, types.float64, types.int64, types.int64, types.int64, types.int64))
def update(v: np.ndarray, ts: int, amount: float, hi: int, lo: int, slot: int, horizon_ms: int) -> int:
    """Fold the transaction in (after its features), dropping whatever has left every window. Returns the slot
    its merchant now has (``slot``: the one it had, -1: none): the caller writes the merchant id there."""
    newest = ts if math.isnan(v[LAST]) else max(int(v[LAST]), ts)

    o = _insert_sorted(v, RECENT, N_RECENT, 2, 0, float(ts))
    v[o], v[o + 1] = ts, amount
    n = int(v[N_RECENT])
    drop = 0
    while drop < n and v[RECENT + 2 * drop] <= newest - HOUR_MS:
        drop += 1
    _drop_front(v, RECENT, 2, N_RECENT, max(drop, n - RECENT_CAP))

    add_bucket(v, HOURS, N_HOURS, 4, HOUR_CAP, ts // HOUR_MS, amount, amount * amount, newest // HOUR_MS - 23)
    add_bucket(v, DAYS, N_DAYS, 4, DAY_CAP, ts // DAY_MS, amount, amount * amount, newest // DAY_MS - 29)

    previous = ts if slot < 0 or math.isnan(v[MERCH + 2 * slot]) else int(v[MERCH + 2 * slot])
    free = -1
    oldest = -1
    slots = int(v[N_SLOTS])
    for s in range(slots):
        o = MERCH + 2 * s
        if not math.isnan(v[o]) and v[o] <= newest - MERCHANT_HORIZON_MS:
            v[o], v[o + 1] = np.nan, 0.0
        if s != slot and math.isnan(v[o]):
            if free < 0:
                free = s
        elif s != slot and (oldest < 0 or v[o + 1] < v[MERCH + 2 * oldest + 1]):
            oldest = s
    if slot < 0:
        if free >= 0:
            slot = free
        elif slots < MERCHANT_CAP:
            slot = slots
            v[N_SLOTS] = slots + 1
        else:
            slot = oldest  # the least recently used merchant goes
    v[USES] += 1
    v[MERCH + 2 * slot] = max(previous, ts)
    v[MERCH + 2 * slot + 1] = v[USES]

    n = int(v[N_SEEN])
    drop = 0
    while drop < n and v[SEEN + 3 * drop + 2] < newest - horizon_ms:
        drop += 1
    _drop_front(v, SEEN, 3, N_SEEN, drop)
    o = _insert_sorted(v, SEEN, N_SEEN, 3, 2, float(ts))
    v[o], v[o + 1], v[o + 2] = hi, lo, ts
    _drop_front(v, SEEN, 3, N_SEEN, int(v[N_SEEN]) - SEEN_CAP)

    if math.isnan(v[LAST]) or ts >= v[LAST]:
        v[LAST] = ts
    if math.isnan(v[FIRST]):  # how long this state has watched the card (drift.is_warm); never changes
        v[FIRST] = ts
    return slot


@compiled(_P(_P))
def pack(v: np.ndarray) -> np.ndarray:
    """The stored form: the scalars, then each list's used rows."""
    size = RECENT
    for _, length_at, width in _LISTS:
        size += int(v[length_at]) * width
    out = np.empty(size)
    out[:RECENT] = v[:RECENT]
    at = RECENT
    for base, length_at, width in _LISTS:
        used = int(v[length_at]) * width
        out[at:at + used] = v[base:base + used]
        at += used
    return out


@compiled(_P(types.Array(types.float64, 1, "C", readonly=True)))
def unpack(packed: np.ndarray) -> np.ndarray:
    """:func:`pack`'s inverse (``packed``: read only, a view of the stored bytes)."""
    v = np.zeros(WIDTH)
    v[:RECENT] = packed[:RECENT]
    at = RECENT
    for base, length_at, width in _LISTS:
        used = int(v[length_at]) * width
        v[base:base + used] = packed[at:at + used]
        at += used
    return v
