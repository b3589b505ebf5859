"""The entity table: every declared entity's profile, and label-derived card risk, as one plain object.

What the models see is the card's features (:mod:`stream_app.domain.features`, state in the card's
partition) followed by :meth:`EntityTable.features` (:func:`model_row`). The table is fed two ways, in
the stream and in training alike:

* :meth:`EntityTable.observe`: a transaction was scored (its amount, time, card and entity ids);
* :meth:`EntityTable.learn`: a label *arrived* for one (its transaction's time, entity ids, and for a fraud
  the merchants its card paid at before: compromise suspects).

Training replays transactions and labels merged in arrival order through these two methods; a worker
applies the ``scores`` topic and the examples log to its replica (:mod:`stream_app.worker.entities`).
So a label counts for a transaction only if it arrived before it, in both.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Final

import numpy as np

from stream_app.domain.events import Transaction
from stream_app.domain.features import DAY_MS, CardState, featurize
from stream_app.domain.features import FEATURE_NAMES as CARD_FEATURE_NAMES
from stream_app.domain.profiles import (
    EntitySpec,
    Profile,
    RiskSettings,
    add_compromise_evidence,
    compromise_suspects,
    copy_profile,
    entity_features,
    expired,
    feature_names,
    from_dict,
    learn_label,
    new_profile,
    observe,
)

MERCHANT: Final = EntitySpec("merchant", "merchant_id")
DEFAULT_ENTITIES: Final = (MERCHANT,)
CARD_RISK_NAMES: Final = ("card_fraud_labels_30d", "card_days_since_fraud_label")
CARD_FRAUD_KEEP: Final = 8  # fraud-label arrival times remembered per card
NO_FRAUD_DAYS: Final = 365.0  # "days since the card's last fraud label" for a card without one
PRIOR_PSEUDO_TX: Final = 100  # the global rate starts near 1 %: (frauds + 1) / (transactions + 100)


#: Transaction fields an entity may be declared on. All but the merchant are personal data: their ids are kept
#: and published only as keyed digests (:meth:`EntityTable.keys`).
ENTITY_FIELDS: Final = ("merchant_id", "device_id", "ip", "email_hash")
_NAME_RE: Final = re.compile(r"[a-z][a-z0-9]{0,15}")


#: What STREAM_APP_ENTITIES says by default: the merchant alone.
DEFAULT_ENTITIES_TEXT: Final = "merchant:merchant_id"


def parse_entities(text: str) -> tuple[EntitySpec, ...]:
    """``STREAM_APP_ENTITIES``: comma-separated ``name:field`` (``merchant:merchant_id,device:device_id``).
    Raises ValueError with what is wrong."""
    specs: list[EntitySpec] = []
    for item in (part.strip() for part in text.split(",")):
        name, sep, fld = item.partition(":")
        if not sep or not _NAME_RE.fullmatch(name) or fld not in ENTITY_FIELDS:
            raise ValueError(f"entity {item!r}: expected name:field, name [a-z][a-z0-9]{{0,15}}, field one of "
                             f"{', '.join(ENTITY_FIELDS)}")
        specs.append(EntitySpec(name, fld))
    if len({s.name for s in specs}) < len(specs) or len({s.field for s in specs}) < len(specs):
        raise ValueError(f"entities {text!r}: a name or field is declared twice")
    return tuple(specs)


@dataclass(frozen=True, slots=True)
class FeatureSet:
    """The model's vector for a set of declared entities: its names, and the name model cards record."""

    specs: tuple[EntitySpec, ...]
    names: tuple[str, ...]
    name: str

    @classmethod
    def of(cls, specs: Sequence[EntitySpec]) -> FeatureSet:
        return cls(tuple(specs), model_feature_names(specs), feature_set_name(specs))

    @classmethod
    def parse(cls, text: str) -> FeatureSet:
        return cls.of(parse_entities(text))


def entity_feature_names(specs: Sequence[EntitySpec] = DEFAULT_ENTITIES) -> tuple[str, ...]:
    return (*(name for spec in specs for name in feature_names(spec)), *CARD_RISK_NAMES)


def model_feature_names(specs: Sequence[EntitySpec] = DEFAULT_ENTITIES) -> tuple[str, ...]:
    """The model's input vector: the card's features, then the entities'."""
    return (*CARD_FEATURE_NAMES, *entity_feature_names(specs))


def feature_set_name(specs: Sequence[EntitySpec] = DEFAULT_ENTITIES) -> str:
    """Names the vector in model cards and captured entries: models refuse a vector of another set."""
    return "card+" + "+".join(f"{s.name}:{s.field}" for s in specs) + "/v2"


@dataclass(frozen=True, slots=True)
class Observation:
    """A scored transaction as the entity table needs it (from a Transaction or a score record)."""

    card_id: str
    ts_ms: int
    amount_eur: float
    keys: Mapping[str, str]  # entity name -> id, for the declared entities the event has


@dataclass(frozen=True, slots=True)
class LabelArrival:
    """A label that arrived (``arrived_ms``) for a transaction of ``tx_ts_ms``; ``suspects``: for a fraud,
    the merchants its card paid at in the weeks before (:func:`~stream_app.domain.profiles.compromise_suspects`)."""

    card_id: str
    tx_ts_ms: int
    arrived_ms: int
    is_fraud: bool
    keys: Mapping[str, str]
    suspects: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"card": self.card_id, "ts": self.tx_ts_ms, "keys": dict(self.keys), "suspects": list(self.suspects)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], arrived_ms: int, is_fraud: bool) -> LabelArrival:
        """Raises KeyError/TypeError/ValueError on a malformed entry (the examples log is writable by others)."""
        keys = {str(k): str(v) for k, v in dict(d["keys"]).items()}
        return cls(str(d["card"]), int(d["ts"]), arrived_ms, is_fraud, keys,
                   tuple(str(s) for s in d.get("suspects", ())))


@dataclass(slots=True)
class EntityTable:
    """Profiles keyed by (entity name, id), fraud-label arrivals per card, and the global fraud rate
    (the prior every share is shrunk toward). Plain data: a worker checkpoints it with pickle."""

    specs: tuple[EntitySpec, ...] = DEFAULT_ENTITIES
    risk: RiskSettings = RiskSettings()
    secret: bytes = field(default=b"", repr=False)  # keys the digests of personal entity ids
    profiles: dict[tuple[str, str], Profile] = field(default_factory=dict)
    card_frauds: dict[str, list[int]] = field(default_factory=dict)  # card -> fraud labels' arrival ms
    n_observed: int = 0
    n_fraud_labels: int = 0
    newest_ms: int = 0

    def keys(self, tx: Transaction) -> dict[str, str]:
        """Entity name -> id for the declared entities ``tx`` has; a personal id (device, IP, e-mail hash)
        as a keyed digest, so that neither the state nor the score records hold it."""
        out = {}
        for spec in self.specs:
            key = spec.key(tx)
            if key is not None:
                out[spec.name] = key if spec.field == "merchant_id" else pseudonym(self.secret, spec.name, key)
        return out

    def personal_keys(self, tx: Transaction) -> dict[str, str]:
        """The digests of ``tx``'s personal entity ids (all but the merchant's), as score records carry them."""
        merchant = {spec.name for spec in self.specs if spec.field == "merchant_id"}
        return {name: key for name, key in self.keys(tx).items() if name not in merchant}

    def observation(self, tx: Transaction) -> Observation:
        return Observation(tx.card_id, tx.ts_ms, tx.amount_eur, self.keys(tx))

    @property
    def prior(self) -> float:
        return (self.n_fraud_labels + 1) / (self.n_observed + PRIOR_PSEUDO_TX)

    def features(self, tx: Transaction) -> list[float]:
        """Entity and card-risk features of ``tx`` from what the table holds now (nothing is changed)."""
        row = entity_features(self.specs, self.profiles, tx, self.prior, self.risk, self.keys(tx))
        arrivals = [t for t in self.card_frauds.get(tx.card_id, ()) if t <= tx.ts_ms]  # arrived before tx
        recent = sum(1 for t in arrivals if t > tx.ts_ms - 30 * DAY_MS)
        since = (tx.ts_ms - max(arrivals)) / DAY_MS if arrivals else NO_FRAUD_DAYS
        row.extend((float(recent), min(since, NO_FRAUD_DAYS)))
        return row

    def profile(self, name: str, key: str) -> Profile:
        """The entity's profile, a new one if it has none yet."""
        profile = self.profiles.get((name, key))
        if profile is None:
            profile = self.profiles[(name, key)] = new_profile()
        return profile

    def observe(self, obs: Observation) -> None:
        for name, key in obs.keys.items():
            observe(self.profile(name, key), obs)
        self.n_observed += 1
        self.newest_ms = max(self.newest_ms, obs.ts_ms)

    def learn(self, label: LabelArrival) -> None:
        """Fold an arrived label in. A card's first fraud label gives its merchants compromise evidence."""
        if not label.is_fraud:
            return  # denominators are the transactions themselves
        self.n_fraud_labels += 1
        for name, key in label.keys.items():
            learn_label(self.profile(name, key), label.tx_ts_ms, label.arrived_ms, True)
        arrivals = self.card_frauds.get(label.card_id)
        if arrivals is None:
            arrivals = self.card_frauds[label.card_id] = []
            for spec in self.specs:
                if spec.field != "merchant_id":
                    continue
                for merchant in label.suspects:
                    add_compromise_evidence(self.profile(spec.name, merchant), label.arrived_ms)
        arrivals.append(label.arrived_ms)
        arrivals.sort()
        del arrivals[:-CARD_FRAUD_KEEP]

    def scratch(self, txs: Sequence[Transaction]) -> EntityTable:
        """A private copy of what ``txs`` read (their profiles, their cards' risk), to score them in sequence
        as the stream would without changing this table (HTTP previews)."""
        wanted = {(name, key) for tx in txs for name, key in self.keys(tx).items()}
        profiles = {k: copy_profile(self.profiles[k]) for k in wanted if k in self.profiles}
        cards = {tx.card_id: list(self.card_frauds[tx.card_id]) for tx in txs if tx.card_id in self.card_frauds}
        return EntityTable(self.specs, self.risk, self.secret, profiles, cards, self.n_observed, self.n_fraud_labels,
                           self.newest_ms)

    def upgraded(self) -> EntityTable:
        """This table with every profile in the array layout (a checkpoint written before it held dicts)."""
        if all(isinstance(p, np.ndarray) for p in self.profiles.values()):
            return self
        return replace(self, profiles={k: p if isinstance(p, np.ndarray) else from_dict(p)
                                       for k, p in self.profiles.items()})

    def expire(self) -> int:
        """Drop profiles idle past the TTL and card risk older than any window, as of the newest event time
        seen (event time, so that training and serving drop the same ones). Returns how many went."""
        now = self.newest_ms
        gone = [k for k, p in self.profiles.items() if expired(p, now, self.risk)]
        for k in gone:
            del self.profiles[k]
        old = [c for c, arrivals in self.card_frauds.items() if arrivals[-1] < now - self.risk.ttl_days * DAY_MS]
        for c in old:
            del self.card_frauds[c]
        return len(gone) + len(old)


@lru_cache(maxsize=1 << 16)  # an event's ids are digested for its features, fold, score record and capture
def pseudonym(secret: bytes, name: str, value: str) -> str:
    """A personal entity id as state and records keep it: HMAC-SHA256 under ``secret`` (the PAN key, when
    one is set; without it a plain digest, which hides nothing from someone who can enumerate the values)."""
    return hmac.new(secret, f"{name}:{value}".encode(), hashlib.sha256).hexdigest()[:24]


def with_suspects(entity: dict[str, Any] | None, is_fraud: bool, card: CardState | None) -> dict[str, Any] | None:
    """A joined label's entity part, with the card's compromise suspects added for a fraud (from the card's
    state when the label is joined, as :func:`stream_app.offline.replay.arrival` does in training)."""
    if entity is None or not is_fraud or card is None:
        return entity
    return {**entity, "suspects": compromise_suspects(card, int(entity["ts"]))}


def model_row(card_row: list[float], table: EntityTable, tx: Transaction) -> list[float]:
    """The model's input for ``tx``: its card features (computed by the caller, in the card's partition)
    followed by the entity table's. Every door builds it here."""
    return card_row + table.features(tx)


def featurize_model(states: MutableMapping[str, CardState], table: EntityTable, tx: Transaction,
                    horizon_ms: int) -> list[float]:
    """What scoring one event does to both states: the model's row for ``tx``, then ``tx`` folded into its
    card's state and the entity table (batch, HTTP previews, training; the stream's worker observes
    through its replica). Raises what :func:`featurize` raises, with nothing changed."""
    row = model_row(featurize(states, tx, horizon_ms), table, tx)
    table.observe(table.observation(tx))
    return row


#: The vector the shipped models take (the default entities); a model card names its set (feature_set).
DEFAULT_FEATURE_SET: Final = FeatureSet.of(DEFAULT_ENTITIES)
MODEL_FEATURES: Final = DEFAULT_FEATURE_SET.names
N_MODEL_FEATURES: Final = len(MODEL_FEATURES)
FEATURE_SET: Final = feature_set_name()
