"""Per-card state and feature computation: plain functions over a small class of plain data.

One code path for the stream, HTTP, batch scoring and training, so what a model was trained on is
what it is served. A card's state is bounded: every list in it has a cap and an event-time horizon. Its numbers
live in one float64 array read and folded by compiled loops (:mod:`stream_app.domain.card_layout`); its last
country and merchant ids beside it.

Windows use event time. The 1 h window is exact (the card's recent transactions are kept); the
1 d window sums hour buckets and the 7 d / 30 d windows sum day buckets, so their edges have the
resolution of one bucket.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from stream_app.domain import card_layout as layout
from stream_app.domain.card_layout import (
    DAY_MS,
    HOUR_MS,
    MERCHANT_CAP,
    MERCHANT_HORIZON_MS,
    NO_PREVIOUS_S,
    RECENT_CAP,
    SEEN_CAP,
)
from stream_app.domain.events import DuplicateEvent, LateEvent, Transaction

__all__ = ["DAY_MS", "HOUR_MS", "MERCHANT_CAP", "MERCHANT_HORIZON_MS", "NO_PREVIOUS_S", "RECENT_CAP", "SEEN_CAP"]

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
assert N_FEATURES == layout.N_FEATURES
_COUNTRY_CHANGED = FEATURE_NAMES.index("country_changed")
_LOW32 = 0xFFFFFFFF


def _no_merchants() -> list[str]:
    return [""] * MERCHANT_CAP


@dataclass(slots=True, eq=False)
class CardState:
    """A card's history as the features need it: ``values`` in :mod:`card_layout`'s layout, ``merchants``: the
    merchant id of each merchant slot (what a slot held before it was freed may stay: a free slot is NaN in
    ``values``), ``country``: the country of the card's newest transaction."""

    values: np.ndarray = field(default_factory=layout.new_array)
    merchants: list[str] = field(default_factory=_no_merchants)
    country: str | None = None

    @property
    def first_ts(self) -> int | None:
        """When this state started watching the card (drift.is_warm); None before its first transaction."""
        first = self.values[layout.FIRST]
        return None if math.isnan(first) else int(first)

    @property
    def last_ts(self) -> int | None:
        last = self.values[layout.LAST]
        return None if math.isnan(last) else int(last)

    def slot(self, merchant_id: str) -> int:
        """The merchant's slot, -1 if it has none (or had one that was freed: :func:`layout.update` checks)."""
        try:
            return self.merchants.index(merchant_id)
        except ValueError:
            return -1

    def merchant_visits(self) -> list[tuple[str, int]]:
        """(merchant id, last visit) of the merchants remembered, least recently used first."""
        v = self.values
        slots = [s for s in range(int(v[layout.N_SLOTS])) if not math.isnan(v[layout.MERCH + 2 * s])]
        slots.sort(key=lambda s: v[layout.MERCH + 2 * s + 1])
        return [(self.merchants[s], int(v[layout.MERCH + 2 * s])) for s in slots]

    def copy(self) -> CardState:
        return CardState(self.values.copy(), list(self.merchants), self.country)

    def as_dict(self) -> dict[str, Any]:
        """The state as lists, the form format v1 and v2 stored (inspection, tests): ``last_ts``, ``last_country``,
        ``recent`` (ts, amount), ``hours`` and ``days`` (index, count, sum, sum of squares), ``merch`` (merchant,
        last visit), ``seen`` (tx_hash, ts), ``first_ts`` (absent before the first transaction)."""
        v = self.values

        def rows(base: int, length_at: int, width: int) -> list[list[float]]:
            return v[base:base + width * int(v[length_at])].reshape(-1, width).tolist()

        out: dict[str, Any] = {
            "last_ts": self.last_ts, "last_country": self.country,
            "recent": [[int(t), a] for t, a in rows(layout.RECENT, layout.N_RECENT, 2)],
            "hours": [[int(i), int(n), s, ss] for i, n, s, ss in rows(layout.HOURS, layout.N_HOURS, 4)],
            "days": [[int(i), int(n), s, ss] for i, n, s, ss in rows(layout.DAYS, layout.N_DAYS, 4)],
            "merch": [[m, t] for m, t in self.merchant_visits()],
            "seen": [[(int(hi) << 32) | int(lo), int(t)] for hi, lo, t in rows(layout.SEEN, layout.N_SEEN, 3)],
        }
        if self.first_ts is not None:
            out["first_ts"] = self.first_ts
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CardState:
        """A state from :meth:`as_dict`'s form (a card stored in format v1 or v2)."""
        v = layout.new_array()
        for key, at in (("last_ts", layout.LAST), ("first_ts", layout.FIRST)):
            if d.get(key) is not None:
                v[at] = d[key]

        def put(rows: list[list[float]], base: int, length_at: int, width: int) -> None:
            v[length_at] = len(rows)
            if rows:
                v[base:base + width * len(rows)] = np.asarray(rows, dtype=np.float64).ravel()

        put(d["recent"][-RECENT_CAP:], layout.RECENT, layout.N_RECENT, 2)
        put(d["hours"][-layout.HOUR_CAP:], layout.HOURS, layout.N_HOURS, 4)
        put(d["days"][-layout.DAY_CAP:], layout.DAYS, layout.N_DAYS, 4)
        put([[h >> 32, h & _LOW32, t] for h, t in d["seen"][-SEEN_CAP:]], layout.SEEN, layout.N_SEEN, 3)
        visits = d["merch"][-MERCHANT_CAP:]
        put([[t, use] for use, (_, t) in enumerate(visits, 1)], layout.MERCH, layout.N_SLOTS, 2)
        v[layout.USES] = len(visits)
        merchants = [m for m, _ in visits] + [""] * (MERCHANT_CAP - len(visits))
        return cls(v, merchants, d.get("last_country"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CardState) and self.as_dict() == other.as_dict()

    __hash__ = None  # type: ignore[assignment]


def new_state() -> CardState:
    return CardState()


def tx_hash(tx_id: str) -> int:
    """64-bit digest of a tx_id: small enough to keep 128 per card, collisions negligible."""
    return int.from_bytes(hashlib.blake2b(tx_id.encode(), digest_size=8).digest(), "big")


def _row(state: CardState, tx: Transaction, amount: float, slot: int) -> list[float]:
    """Features of ``tx`` (its amount in EUR, its merchant's slot) from the card's history before it."""
    out = np.empty(N_FEATURES)
    layout.features(state.values, tx.ts_ms, amount, slot, out)
    row: list[float] = out.tolist()
    channel = tx.channel
    row[_COUNTRY_CHANGED:] = (float(state.country is not None and state.country != tx.country),
                              float(channel == "ecom"), float(channel == "atm"), float(channel == "moto"))
    return row


def compute_features(state: CardState, tx: Transaction) -> list[float]:
    """Features of ``tx`` given the card's history *before* it. Does not modify ``state``."""
    return _row(state, tx, tx.amount_eur, state.slot(tx.merchant_id))


def load_once(states: MutableMapping[str, CardState], card_id: str,
              load: Callable[[str], CardState | None]) -> None:
    """Bring a card's stored state into a batch's working copies, once per batch (stream and HTTP)."""
    if card_id not in states:
        state = load(card_id)
        if state is not None:
            states[card_id] = state


def featurize(states: MutableMapping[str, CardState], tx: Transaction, horizon_ms: int) -> list[float]:
    """Check ``tx`` (a replay or too late: raised), compute its features and fold it into its card's state, in one
    step: the stream, HTTP, batch and training all call this."""
    state = states.get(tx.card_id)
    if state is None:
        state = CardState()
    h = tx_hash(tx.tx_id)
    hi, lo = h >> 32, h & _LOW32
    v = state.values
    found = layout.check(v, tx.ts_ms, hi, lo, horizon_ms)
    if found == layout.DUPLICATE:
        raise DuplicateEvent("tx_id already scored for this card", "tx_id")
    if found == layout.LATE:
        raise LateEvent(f"event is more than {horizon_ms // 1000} s older than the card's newest", "timestamp")
    if found == layout.FORGOTTEN:
        raise LateEvent("event is older than the card's de-duplication memory", "timestamp")
    amount, slot = tx.amount_eur, state.slot(tx.merchant_id)
    features = _row(state, tx, amount, slot)
    if math.isnan(v[layout.LAST]) or tx.ts_ms >= v[layout.LAST]:  # the newest transaction's country is the card's
        state.country = tx.country
    state.merchants[layout.update(v, tx.ts_ms, amount, hi, lo, slot, horizon_ms)] = tx.merchant_id
    states[tx.card_id] = state
    return features
