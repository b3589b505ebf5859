"""Per-card state and feature computation: plain functions over plain data.

One code path for the stream, HTTP, batch scoring and training, so what a model was trained on is
what it is served. Card state is a JSON-serialisable dict (a Faust table stores it as bytes, a test
builds it by hand) and is bounded: every list in it has a cap and an event-time horizon.

Windows use event time. The 1 h window is exact (the card's recent transactions are kept); the
1 d window sums hour buckets and the 7 d / 30 d windows sum day buckets, so their edges have the
resolution of one bucket.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, MutableMapping
from typing import Any, Final

from stream_app.domain.events import DuplicateEvent, LateEvent, Transaction

HOUR_MS: Final = 3_600_000
DAY_MS: Final = 24 * HOUR_MS
NO_PREVIOUS_S: Final = 30 * 86_400.0  # "seconds since previous" for a card's first transaction

RECENT_CAP: Final = 64  # transactions kept for the exact 1 h window
MERCHANT_CAP: Final = 32  # merchants remembered per card (LRU), for first-use and distinct-1d
SEEN_CAP: Final = 128  # tx_id hashes remembered per card for de-duplication
MERCHANT_HORIZON_MS: Final = 30 * DAY_MS

WINDOWS: Final = ("1h", "1d", "7d", "30d")
FEATURE_NAMES: Final[tuple[str, ...]] = (
    "amount_eur",
    "log_amount",
    "hour_of_day",
    "weekday",
    *(f"{stat}_{w}" for w in WINDOWS for stat in ("count", "mean_amount", "std_amount")),
    "seconds_since_prev",
    "amount_to_mean_30d",
    "distinct_merchants_1d",
    "first_use_of_merchant",
    "country_changed",
    "is_ecom",
    "is_atm",
    "is_moto",
)
N_FEATURES: Final = len(FEATURE_NAMES)

CardState = dict[str, Any]


def new_state() -> CardState:
    return {"last_ts": None, "last_country": None, "recent": [], "hours": [], "days": [],
            "merch": [], "seen": []}


def tx_hash(tx_id: str) -> int:
    """64-bit digest of a tx_id: small enough to keep 128 per card, collisions negligible."""
    return int.from_bytes(hashlib.blake2b(tx_id.encode(), digest_size=8).digest(), "big")


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


def load_once(states: MutableMapping[str, CardState], card_id: str,
              load: Callable[[str], CardState | None]) -> None:
    """Bring a card's stored state into a batch's working copies, once per batch (stream and HTTP)."""
    if card_id not in states:
        state = load(card_id)
        if state is not None:
            states[card_id] = state


def featurize(states: MutableMapping[str, CardState], tx: Transaction, horizon_ms: int) -> list[float]:
    """Check, compute and update in one step: the stream, batch and training all call this."""
    state = states.get(tx.card_id)
    if state is None:
        state = new_state()
    h = tx_hash(tx.tx_id)
    check_new(state, tx, horizon_ms, h)
    features = compute_features(state, tx)
    update_state(state, tx, horizon_ms, h)
    states[tx.card_id] = state
    return features
