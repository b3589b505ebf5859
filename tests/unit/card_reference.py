"""The card state's list code from before the array layout (2026-12-07): the oracle the compiled loops are tested
against (``test_card_layout.py``). Same operations, same order; a state is the dict that formats v1 and v2 stored."""

from __future__ import annotations

import math
from typing import Any

from stream_app.domain.events import DuplicateEvent, LateEvent, Transaction
from stream_app.domain.features import (
    DAY_MS,
    HOUR_MS,
    MERCHANT_CAP,
    MERCHANT_HORIZON_MS,
    NO_PREVIOUS_S,
    RECENT_CAP,
    SEEN_CAP,
)

CardState = dict[str, Any]


def new_state() -> CardState:
    return {"last_ts": None, "last_country": None, "recent": [], "hours": [], "days": [],
            "merch": [], "seen": []}


def _bucket_stats(buckets: list[list[float]], lo: int, hi: int) -> tuple[float, float, float]:
    n = s = ss = 0.0
    for idx, bn, bs, bss in buckets:
        if lo <= idx <= hi:
            n += bn
            s += bs
            ss += bss
    return n, s, ss


def _moments(n: float, s: float, ss: float) -> tuple[float, float, float]:
    if n == 0:
        return 0.0, 0.0, 0.0
    mean = s / n
    return n, mean, math.sqrt(max(0.0, ss / n - mean * mean))


def compute_features(state: CardState, tx: Transaction) -> list[float]:
    """Features of ``tx`` given the card's history *before* it. Does not modify ``state``."""
    ts = tx.ts_ms
    amount = tx.amount_eur
    hour_idx, day_idx = ts // HOUR_MS, ts // DAY_MS

    n1 = s1 = ss1 = 0.0
    for t, a in state["recent"]:
        if ts - HOUR_MS < t <= ts:
            n1 += 1
            s1 += a
            ss1 += a * a
    windows = (
        _moments(n1, s1, ss1),
        _moments(*_bucket_stats(state["hours"], hour_idx - 23, hour_idx)),
        _moments(*_bucket_stats(state["days"], day_idx - 6, day_idx)),
        _moments(*_bucket_stats(state["days"], day_idx - 29, day_idx)),
    )
    # The amount against the card's 30 d mean: 1.0 ("as usual") when there is no spending to compare with,
    # no history or only zero-amount card verifications, as for a card's first payment. A ratio to a zero
    # mean is infinite, and any floor under it would make an arbitrary huge value that swamps the online
    # model's running scaler. A positive mean is no denormal (the parser refuses amounts in (0, 0.001)),
    # so the ratio to it is finite.
    mean_30d = windows[3][1]
    amount_to_mean = amount / mean_30d if mean_30d > 0 else 1.0

    last_ts = state["last_ts"]
    since_prev = NO_PREVIOUS_S if last_ts is None else max(0.0, (ts - last_ts) / 1000.0)
    merchants_1d = 0
    first_use = 1.0
    for merchant, seen_ts in state["merch"]:
        if ts - DAY_MS < seen_ts <= ts:
            merchants_1d += 1
        if merchant == tx.merchant_id and seen_ts <= ts:
            first_use = 0.0
    last_country = state["last_country"]
    return [
        amount,
        math.log1p(amount),
        float((ts // HOUR_MS) % 24),
        float((ts // DAY_MS + 3) % 7),  # 1970-01-01 was a Thursday; Monday = 0
        *(v for w in windows for v in w),
        min(since_prev, NO_PREVIOUS_S),
        amount_to_mean,
        float(merchants_1d),
        first_use,
        float(last_country is not None and last_country != tx.country),
        float(tx.channel == "ecom"),
        float(tx.channel == "atm"),
        float(tx.channel == "moto"),
    ]


def _add_to_bucket(buckets: list[list[float]], idx: int, amount: float, keep_from: int) -> None:
    for bucket in buckets:
        if bucket[0] == idx:
            bucket[1] += 1
            bucket[2] += amount
            bucket[3] += amount * amount
            break
    else:
        buckets.append([idx, 1, amount, amount * amount])
        if len(buckets) > 1 and buckets[-2][0] > idx:  # usually appended in order
            buckets.sort(key=lambda b: b[0])
    while buckets and buckets[0][0] < keep_from:
        buckets.pop(0)


def check_new(state: CardState, tx: Transaction, horizon_ms: int, h: int) -> None:
    """Refuse a tx_id this card already has (``h``: its tx_hash), or one too old to tell whether it has."""
    if any(seen == h for seen, _ in state["seen"]):
        raise DuplicateEvent("tx_id already scored for this card", "tx_id")
    last_ts = state["last_ts"]
    oldest_seen = state["seen"][0][1] if len(state["seen"]) >= SEEN_CAP else None
    if last_ts is not None and tx.ts_ms < last_ts - horizon_ms:
        raise LateEvent(f"event is more than {horizon_ms // 1000} s older than the card's newest", "timestamp")
    if oldest_seen is not None and tx.ts_ms < oldest_seen:
        raise LateEvent("event is older than the card's de-duplication memory", "timestamp")


def update_state(state: CardState, tx: Transaction, horizon_ms: int, h: int) -> None:
    """Fold ``tx`` (``h``: its tx_hash) into the card's state, dropping whatever has left every window."""
    ts = tx.ts_ms
    amount = tx.amount_eur
    newest = ts if state["last_ts"] is None else max(state["last_ts"], ts)

    recent = state["recent"]
    recent.append([ts, amount])
    if len(recent) > 1 and recent[-2][0] > ts:
        recent.sort(key=lambda r: r[0])
    cutoff = newest - HOUR_MS
    if recent[0][0] <= cutoff or len(recent) > RECENT_CAP:  # kept sorted by time: only then is anything dropped
        state["recent"] = [r for r in recent if r[0] > cutoff][-RECENT_CAP:]
    _add_to_bucket(state["hours"], ts // HOUR_MS, amount, newest // HOUR_MS - 23)
    _add_to_bucket(state["days"], ts // DAY_MS, amount, newest // DAY_MS - 29)

    merch = [m for m in state["merch"] if m[0] != tx.merchant_id and m[1] > newest - MERCHANT_HORIZON_MS]
    previous = next((m[1] for m in state["merch"] if m[0] == tx.merchant_id), ts)
    merch.append([tx.merchant_id, max(previous, ts)])
    state["merch"] = merch[-MERCHANT_CAP:]

    seen = state["seen"]
    if seen and seen[0][1] < newest - horizon_ms:  # kept sorted by time: only then is anything dropped
        seen = [s for s in seen if s[1] >= newest - horizon_ms]
    seen.append([h, ts])
    if len(seen) > 1 and seen[-2][1] > ts:
        seen.sort(key=lambda s: s[1])
    state["seen"] = seen[-SEEN_CAP:]

    if state["last_ts"] is None or ts >= state["last_ts"]:
        state["last_ts"] = ts
        state["last_country"] = tx.country
    state.setdefault("first_ts", ts)  # how long this state has watched the card (drift.is_warm); never changes
