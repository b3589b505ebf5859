"""Entity profiles beyond the card, with risk learned from labels: plain functions over plain data.

A profile watches one entity (a merchant or terminal, a device, an IP address, ...) across every card
that pays there, so fraud at a compromised merchant — each card defrauded once, the merchant over and
over — is visible where a card's own history is not. Entities are declared once (:class:`EntitySpec`)
and the same functions serve the stream, HTTP, batch and training, like the card's features.

A profile is a JSON-serialisable dict, bounded (day and hour buckets of the last 30 days, a 64-register
HyperLogLog of the cards seen, label buckets of the last 30 days): about 1-2 KB whatever the traffic.

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

from stream_app.domain.events import Transaction
from stream_app.domain.features import DAY_MS, HOUR_MS, CardState, _add_to_bucket, _moments

Profile = dict[str, Any]

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
    return {"first_ts": None, "last_ts": None, "n": 0, "hours": [], "days": [], "hll": [0] * _HLL_M,
            "distinct": 0.0, "fraud_by_tx_day": [], "fraud_arrived": [], "compromise": []}


def copy_profile(profile: Profile) -> Profile:
    """A private copy to fold transactions into (HTTP previews): its lists, and the buckets in them, are new
    (``copy.deepcopy``'s result, for a tenth of its cost: a profile holds only numbers, lists and lists of them)."""
    return {k: _copy_value(v) for k, v in profile.items()}


def _copy_value(value: Any) -> Any:
    """A profile's lists are of one kind each: buckets (lists of numbers) or registers (numbers)."""
    if not isinstance(value, list):
        return value
    return [b[:] for b in value] if value and isinstance(value[0], list) else value[:]


def _hll_add(registers: list[int], item: str) -> bool:
    """Add ``item``; True when a register grew (only then can the estimate change)."""
    h = int.from_bytes(hashlib.blake2b(item.encode(), digest_size=8).digest(), "big")
    idx, rest = h >> (64 - HLL_BITS), h & ((1 << (64 - HLL_BITS)) - 1)
    rank = (64 - HLL_BITS) - rest.bit_length() + 1
    if rank > registers[idx]:
        registers[idx] = rank
        return True
    return False


def hll_count(registers: Sequence[int]) -> float:
    """HyperLogLog estimate (with the small-range correction: exact-ish for a few dozen cards)."""
    m = len(registers)
    estimate = 0.709 * m * m / sum(2.0 ** -r for r in registers)
    zeros = registers.count(0)
    if estimate <= 2.5 * m and zeros:
        return m * math.log(m / zeros)
    return estimate


def _add_count(buckets: list[list[float]], day: int, n: float, keep_from: int) -> None:
    for bucket in buckets:
        if bucket[0] == day:
            bucket[1] += n
            break
    else:
        buckets.append([day, n])
        buckets.sort(key=lambda b: b[0])
    while buckets and buckets[0][0] < keep_from:
        buckets.pop(0)


def observe(profile: Profile, tx: Observed) -> None:
    """Fold a scored transaction into its entity's profile (after its features were computed)."""
    ts, amount = tx.ts_ms, tx.amount_eur
    newest = ts if profile["last_ts"] is None else max(profile["last_ts"], ts)
    if profile["first_ts"] is None or ts < profile["first_ts"]:
        profile["first_ts"] = ts
    profile["last_ts"] = newest
    profile["n"] += 1
    _add_to_bucket(profile["hours"], ts // HOUR_MS, amount, newest // HOUR_MS - 23)
    _add_to_bucket(profile["days"], ts // DAY_MS, amount, newest // DAY_MS - (KEEP_DAYS - 1))
    if _hll_add(profile["hll"], tx.card_id):  # the estimate is kept: features read it on every event
        profile["distinct"] = hll_count(profile["hll"])


def learn_label(profile: Profile, tx_ts_ms: int, arrived_ms: int, is_fraud: bool) -> None:
    """A label for one of the entity's transactions arrived: fraud counts by the transaction's day (for
    shares over mature transactions) and by the label's arrival day (for "frauds reported lately")."""
    if not is_fraud:
        return  # the denominators are the transactions themselves: a legit label changes no count
    keep_from = max(tx_ts_ms, arrived_ms, profile["last_ts"] or 0) // DAY_MS - (KEEP_DAYS - 1)
    _add_count(profile["fraud_by_tx_day"], tx_ts_ms // DAY_MS, 1, keep_from)
    _add_count(profile["fraud_arrived"], arrived_ms // DAY_MS, 1, keep_from)


def add_compromise_evidence(profile: Profile, arrived_ms: int, weight: float = 1.0) -> None:
    """A defrauded card had paid here before its fraud (see :func:`compromise_suspects`)."""
    _add_count(profile["compromise"], arrived_ms // DAY_MS, weight, arrived_ms // DAY_MS - (KEEP_DAYS - 1))


def compromise_suspects(card: CardState, first_fraud_ts: int, lookback_days: int = 30) -> list[str]:
    """The merchants a card paid at in the ``lookback_days`` before its first fraud (the card's merchant
    memory: its last visit to each of its recent merchants)."""
    lo = first_fraud_ts - lookback_days * DAY_MS
    return [merchant for merchant, seen_ts in card["merch"] if lo <= seen_ts < first_fraud_ts]


def features(profile: Profile | None, tx: Transaction, prior_rate: float, risk: RiskSettings) -> list[float]:
    """The entity's features for ``tx``, from its history *before* ``tx`` (``profile`` is not modified;
    None: an entity never seen). In the order of :func:`feature_names`.

    One pass per bucket list for all of its windows (this runs for every event and entity): each window
    adds the same bucket values in the same order as a pass of its own would, so the floats are the same."""
    p = profile if profile is not None else new_profile()
    ts = tx.ts_ms
    hour, day = ts // HOUR_MS, ts // DAY_MS
    n1 = s1 = ss1 = n24 = s24 = ss24 = 0.0
    for idx, bn, bs, bss in p["hours"]:
        if hour - 23 <= idx <= hour:
            n24 += bn
            s24 += bs
            ss24 += bss
            if idx == hour:  # the current hour bucket: 1 h at bucket resolution
                n1 += bn
                s1 += bs
                ss1 += bss
    short, long = SHARE_WINDOWS  # shares over mature transactions: days [day - w, day - maturity]
    mature_to = day - risk.maturity_days
    n7 = s7 = ss7 = n30 = s30 = ss30 = mature_short = mature_long = 0.0
    for idx, bn, bs, bss in p["days"]:
        if day - 29 <= idx <= day:
            n30 += bn
            s30 += bs
            ss30 += bss
            if idx >= day - 6:
                n7 += bn
                s7 += bs
                ss7 += bss
        if day - long <= idx <= mature_to:
            mature_long += bn
            if idx >= day - short:
                mature_short += bn
    frauds_short = frauds_long = 0.0
    for idx, count in p["fraud_by_tx_day"]:
        if day - long <= idx <= mature_to:
            frauds_long += count
            if idx >= day - short:
                frauds_short += count
    # Age and count saturate: past the windows' 30 days, or a thousand transactions, a profile is simply
    # established, and a service running for years must not feed its models values no training set held.
    age_days = 0.0 if p["first_ts"] is None else min(float(KEEP_DAYS), max(0.0, (ts - p["first_ts"]) / DAY_MS))
    prior = risk.prior_weight * prior_rate
    shares = [(f + prior) / (m + risk.prior_weight)
              for f, m in ((frauds_short, mature_short), (frauds_long, mature_long))]
    distinct = p["distinct"]
    compromise = _recent_sums(p["compromise"], day)
    return [
        *_moments(n1, s1, ss1), *_moments(n24, s24, ss24), *_moments(n7, s7, ss7), *_moments(n30, s30, ss30),
        distinct,
        age_days,
        float(min(p["n"], N_TOTAL_CAP)),
        *_recent_sums(p["fraud_arrived"], day),  # arrived on t's day or before
        *shares,
        *compromise,
        compromise[-1] / max(distinct, 1.0),  # a common stop of every card is no suspect; a skimmer's share is high
    ]


def _recent_sums(buckets: list[list[float]], day: int) -> list[float]:
    """The buckets' values summed over each of :data:`RISK_WINDOWS` (1, 7, 30 days) ending on ``day`` (day
    buckets after it, such as labels arrived later, are not counted)."""
    one = seven = thirty = 0.0
    for idx, value in buckets:
        if day - 30 < idx <= day:
            thirty += value
            if idx > day - 7:
                seven += value
                if idx == day:
                    one += value
    return [one, seven, thirty]


def expired(profile: Profile, now_ms: int, risk: RiskSettings) -> bool:
    """Idle longer than the TTL: nothing of it is in any window any more; the caller drops it."""
    last = profile["last_ts"]
    return last is not None and last < now_ms - risk.ttl_days * DAY_MS


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
