"""Entity profiles beyond the card, with risk learned from labels: plain functions over plain data.

A profile watches one entity (a merchant or terminal, a device, an IP address, ...) across every card
that pays there, so fraud at a compromised merchant — each card defrauded once, the merchant over and
over — is visible where a card's own history is not. Entities are declared once (:class:`EntitySpec`)
and the same functions serve the stream, HTTP, batch and training, like the card's features.

A profile is one float64 array of a fixed layout (:mod:`stream_app.domain.profile_layout`: day and hour buckets
of the last 30 days, a 64-register HyperLogLog of the cards seen, label buckets of the last 30 days), 5.3 KB
whatever the traffic, read and folded by compiled loops; :func:`as_dict` shows it as lists.

**Label-derived risk, without leaks.** Labels are folded in as they *arrive* (:func:`learn_label`), so
a profile only ever holds labels that arrived before whatever is scored next — provided the caller
replays transactions and labels in arrival order, as the stream does by construction and training must.
As a guard, a label is counted at event time ``t`` only when it arrived on ``t``'s day or before. Fraud
*shares* are taken over transactions old enough for their labels to have arrived (``maturity_days``):
a recent transaction without a label is "not known yet", not "legitimate". Shares are shrunk toward a
prior rate (the global one, or the merchant category's) with the weight of ``prior_weight`` transactions,
so a new entity's 0/0 reads as the prior, not as 0.

**Common point of compromise.** When a card's first fraud label arrives, the merchants the card paid at
in the weeks before that fraud gain compromise evidence (:func:`compromise_suspects`): skimmed cards are
defrauded elsewhere, later, so a merchant that many defrauded cards visited stands out.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import numpy as np

from stream_app.domain import profile_layout as layout
from stream_app.domain.events import Transaction
from stream_app.domain.features import DAY_MS, CardState

Profile = np.ndarray  # profile_layout's array

HLL_BITS: Final = 6  # 64 registers: about 13 % standard error on distinct counts, 64 bytes of state
_HLL_M: Final = 1 << HLL_BITS
KEEP_DAYS: Final = 30
N_TOTAL_CAP: Final = 1000  # the profile's count feature saturates here (see features)
RISK_WINDOWS: Final = (1, 7, 30)  # days, for fraud labels arrived and compromise evidence
SHARE_WINDOWS: Final = (7, 30)  # days, for fraud shares over mature transactions


@dataclass(frozen=True, slots=True)
class EntitySpec:
    """An entity to profile: its name (feature prefix) and the transaction field that identifies it."""

    name: str
    field: str

    def key(self, tx: Transaction) -> str | None:
        value = getattr(tx, self.field, None)
        return None if value in (None, "") else str(value)


@dataclass(frozen=True, slots=True)
class RiskSettings:
    """How labels become features: when a transaction's label is due, and how new entities are shrunk."""

    maturity_days: int = 7  # transactions younger than this have no label *yet*
    prior_weight: float = 20.0  # pseudo-transactions at the prior rate added to every share
    ttl_days: int = 60  # a profile idle this long is dropped (expired)


def feature_names(spec: EntitySpec) -> tuple[str, ...]:
    n = spec.name
    return (
        *(f"{n}_{stat}_{w}" for w in ("1h", "1d", "7d", "30d") for stat in ("count", "mean_amount", "std_amount")),
        f"{n}_distinct_cards",
        f"{n}_age_days",
        f"{n}_n_total",
        *(f"{n}_fraud_labels_{d}d" for d in RISK_WINDOWS),
        *(f"{n}_fraud_share_{d}d" for d in SHARE_WINDOWS),
        *(f"{n}_compromise_{d}d" for d in RISK_WINDOWS),
        f"{n}_compromise_per_card_30d",
    )


class Observed(Protocol):
    """What a profile takes from a transaction: a :class:`Transaction`, or an observation read back from a
    score record (the worker's replicas are fed from the ``scores`` topic)."""

    @property
    def ts_ms(self) -> int: ...
    @property
    def amount_eur(self) -> float: ...
    @property
    def card_id(self) -> str: ...


def new_profile() -> Profile:
    return layout.new_array()


_NEVER_SEEN: Final = new_profile()  # read only: what an entity without a profile is scored from


def copy_profile(profile: Profile) -> Profile:
    """A private copy to fold transactions into (HTTP previews)."""
    return profile.copy()


def _hll_slot(item: str) -> tuple[int, int]:
    """The HyperLogLog register of ``item`` and its rank there."""
    h = int.from_bytes(hashlib.blake2b(item.encode(), digest_size=8).digest(), "big")
    idx, rest = h >> (64 - HLL_BITS), h & ((1 << (64 - HLL_BITS)) - 1)
    return idx, (64 - HLL_BITS) - rest.bit_length() + 1


def observe(profile: Profile, tx: Observed) -> None:
    """Fold a scored transaction into its entity's profile (after its features were computed)."""
    layout.observe(profile, tx.ts_ms, float(tx.amount_eur), *_hll_slot(tx.card_id))


def learn_label(profile: Profile, tx_ts_ms: int, arrived_ms: int, is_fraud: bool) -> None:
    """A label for one of the entity's transactions arrived: fraud counts by the transaction's day (for
    shares over mature transactions) and by the label's arrival day (for "frauds reported lately")."""
    if is_fraud:  # the denominators are the transactions themselves: a legit label changes no count
        layout.learn_fraud(profile, tx_ts_ms, arrived_ms)


def add_compromise_evidence(profile: Profile, arrived_ms: int, weight: float = 1.0) -> None:
    """A defrauded card had paid here before its fraud (see :func:`compromise_suspects`)."""
    layout.add_compromise(profile, arrived_ms, float(weight))


def compromise_suspects(card: CardState, first_fraud_ts: int, lookback_days: int = 30) -> list[str]:
    """The merchants a card paid at in the ``lookback_days`` before its first fraud (the card's merchant
    memory: its last visit to each of its recent merchants)."""
    lo = first_fraud_ts - lookback_days * DAY_MS
    return [merchant for merchant, seen_ts in card.merchant_visits() if lo <= seen_ts < first_fraud_ts]


def features(profile: Profile | None, tx: Transaction, prior_rate: float, risk: RiskSettings) -> list[float]:
    """The entity's features for ``tx``, from its history *before* ``tx`` (``profile`` is not modified;
    None: an entity never seen). In the order of :func:`feature_names`."""
    out = np.empty(layout.N_ENTITY_FEATURES)
    short, long = SHARE_WINDOWS
    layout.features(_NEVER_SEEN if profile is None else profile, tx.ts_ms, float(prior_rate), risk.maturity_days,
                    float(risk.prior_weight), short, long, float(KEEP_DAYS), float(N_TOTAL_CAP), out)
    return out.tolist()


def expired(profile: Profile, now_ms: int, risk: RiskSettings) -> bool:
    """Idle longer than the TTL: nothing of it is in any window any more; the caller drops it."""
    last = profile[layout.LAST]
    return not math.isnan(last) and last < now_ms - risk.ttl_days * DAY_MS


_LISTS: Final = (("hours", layout.HOURS, layout.N_HOURS, 4, layout.HOUR_CAP),
                 ("days", layout.DAYS, layout.N_DAYS, 4, layout.DAY_CAP),
                 ("fraud_by_tx_day", layout.FRAUD_TX, layout.N_FRAUD_TX, 2, layout.LABEL_CAP),
                 ("fraud_arrived", layout.FRAUD_ARRIVED, layout.N_FRAUD_ARRIVED, 2, layout.LABEL_CAP),
                 ("compromise", layout.COMPROMISE, layout.N_COMPROMISE, 2, layout.LABEL_CAP))


def as_dict(profile: Profile) -> dict[str, Any]:
    """The profile as lists (inspection, tests; the form profiles had in memory and in checkpoints before the
    array): ``first_ts``, ``last_ts``, ``n``, ``distinct``, the bucket lists and the ``hll`` registers."""
    first, last = profile[layout.FIRST], profile[layout.LAST]
    out: dict[str, Any] = {"first_ts": None if math.isnan(first) else int(first),
                           "last_ts": None if math.isnan(last) else int(last), "n": int(profile[layout.N]),
                           "distinct": float(profile[layout.DISTINCT])}
    for name, base, length_at, width, _ in _LISTS:
        rows = profile[base:base + width * int(profile[length_at])].reshape(-1, width).tolist()
        out[name] = [[int(r[0]), *r[1:]] for r in rows]
    out["hll"] = [int(r) for r in profile[layout.HLL:layout.HLL + _HLL_M]]
    return out


def from_dict(d: Mapping[str, Any]) -> Profile:
    """A profile from :func:`as_dict`'s form (a checkpoint written before the array layout)."""
    p = layout.new_array()
    for key, at in (("first_ts", layout.FIRST), ("last_ts", layout.LAST)):
        if d.get(key) is not None:
            p[at] = d[key]
    p[layout.N], p[layout.DISTINCT] = d["n"], d["distinct"]
    for name, base, length_at, width, cap in _LISTS:
        rows = sorted(d[name])[-cap:]
        p[length_at] = len(rows)
        if rows:
            p[base:base + width * len(rows)] = np.asarray(rows, dtype=np.float64).ravel()
    p[layout.HLL:layout.HLL + _HLL_M] = d["hll"]
    return p


def entity_features(specs: Sequence[EntitySpec], profiles: Mapping[tuple[str, str], Profile], tx: Transaction,
                    prior_rate: float, risk: RiskSettings, keys: Mapping[str, str] | None = None) -> list[float]:
    """Every declared entity's features for ``tx``, concatenated in declaration order (``profiles`` keyed
    by (entity name, entity id); ``keys``: the ids by entity name, default each spec's field value); an
    event without the entity's field gets a never-seen profile."""
    row: list[float] = []
    for spec in specs:
        key = spec.key(tx) if keys is None else keys.get(spec.name)
        row.extend(features(None if key is None else profiles.get((spec.name, key)), tx, prior_rate, risk))
    return row
