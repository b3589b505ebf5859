"""The delivery protocol: how a micro-batch's effects reach the broker, and how a crash between them is repaired.

Without transactions (the embedded broker has none, see docs/concepts/delivery.md) a micro-batch has three
kinds of effects, written in this order by the score agent (:mod:`stream_app.worker.score_agent`):

1. **Score** the batch in memory: card states change, their changelog records, the captured vectors and
   the re-keyed events are collected in the batch's *state* batches; the outputs (scores, alerts,
   examples, dead letters) in its *output* batches, not sent yet. The batch gets a number (:meth:`Ledger.open`)
   and its scored events are written into their cards' **ledger entries** (:meth:`Ledger.remember`),
   stored beside the card state in the same changelog record (:func:`encode_card`), so they reach the
   broker with the state and no later.
2. **State first**: the state batches are handed to the producer in batch order and confirmed by the
   broker before any output of the batch starts, so no score or alert is out whose redelivery the state
   would not recognise as a duplicate (that would be a second alert).
3. **Outputs**: the output batches are sent and confirmed.
4. **Acknowledge** the input messages (faust commits a consecutive run of acknowledged offsets), then
   **close** the batch (:meth:`Ledger.close`): its ledger entries are dropped at the card's next write.

A crash between 2 and 4 leaves events whose state is stored (their redelivery is a duplicate) but whose
outputs may be missing. Those are exactly the events of a stored ledger entry that is still open: a
redelivered duplicate found there is queued (:meth:`Ledger.recheck`), the output topics are read back
(:mod:`stream_app.kafka.witness`) and what is missing is published again from the remembered features
(:func:`plan_repair`). A crash before 2 leaves nothing stored: the redelivered events are scored anew.
At most ``max_in_flight_batches`` batches are open at a time, which bounds the entries per card.

Stored card format (the ``cards`` table), versioned: **v1** (until 2026-12) was the feature state as JSON with
the ledger entry under the key ``"unconfirmed"``; **v2** was ``{"v": 2, "card": <state>, "ledger": <entry>}``;
**v3** (binary, since the card state became an array) is an 8-byte header (``b"C"``, the version, the number of
floats, the length of the merchant ids, the last country or two zero bytes), the state's used floats
(:func:`card_layout.pack`, little-endian float64), its merchant slots' ids joined by spaces, and the ledger entry
as JSON (absent when empty). :func:`decode_card` reads all three; a newer version is refused with the upgrade step
(a worker must never rewrite state it does not understand).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import orjson

from stream_app.domain import card_layout
from stream_app.domain.events import Transaction, kept_json
from stream_app.domain.features import CardState
from stream_app.domain.records import Source

CARD_FORMAT: Final = 3
_HEAD: Final = struct.Struct("<cBHH2s")  # b"C", version, floats, merchant ids' length, country
CARDS_TABLE: Final = "cards"  # the faust table of card states (its changelog: compat.changelog_topic)
LEDGER_MAX_AGE_MS: Final = 300_000  # an older entry was long confirmed (takeovers take seconds): a plain duplicate
REPAIR_MARGIN_MS: Final = 5_000  # read the output topics back this much before the oldest entry

#: A card's ledger entry: {"at": ms of the write, "tx": {tx_id: [features, [topic, partition, offset, ts_ms], seq]}}
LedgerEntry = dict[str, Any]


class StateFormatError(RuntimeError):
    """A stored state written by a newer worker: this one must not read or rewrite it."""


def encode_card(state: CardState, entry: LedgerEntry | None) -> bytes:
    """The stored value of a card (format v3)."""
    packed = card_layout.pack(state.values).astype("<f8", copy=False)
    merchants = " ".join(state.merchants[:int(state.values[card_layout.N_SLOTS])]).encode()
    country = b"\0\0" if state.country is None else state.country.encode()
    head = _HEAD.pack(b"C", CARD_FORMAT, len(packed), len(merchants), country)
    return b"".join((head, packed.tobytes(), merchants, kept_json(entry) if entry else b""))


def decode_card(stored: bytes) -> tuple[CardState, LedgerEntry | None]:
    """A stored card's feature state and ledger entry, from format v1, v2 or v3."""
    if stored[:1] != b"C":  # JSON: v1 or v2
        obj = orjson.loads(stored)
        version = obj.get("v", 1)
        if version == 1:  # the feature state itself, the ledger entry inside it
            entry = obj.pop("unconfirmed", None)
            return CardState.from_dict(obj), entry
        if version == 2:
            return CardState.from_dict(obj["card"]), obj.get("ledger")
    else:
        _, version, n, merchants_len, country = _HEAD.unpack_from(stored)
        if version == CARD_FORMAT:
            packed = np.frombuffer(stored, "<f8", n, _HEAD.size)
            values = card_layout.unpack(packed if packed.flags.aligned else packed.copy())
            at = _HEAD.size + 8 * n
            merchants = stored[at:at + merchants_len].decode().split(" ") if merchants_len else []
            merchants += [""] * (card_layout.MERCHANT_CAP - len(merchants))
            rest = stored[at + merchants_len:]
            return (CardState(values, merchants, None if country == b"\0\0" else country.decode()),
                    orjson.loads(rest) if rest else None)
    raise StateFormatError(
        f"the cards table holds state format v{version}, this worker reads v1 to v{CARD_FORMAT}: "
        "run the worker version that wrote it (or newer); see docs/notes/where-things-went.md")


@dataclass(slots=True)
class Repair:
    """A redelivered event whose outputs may be missing, with what it was scored from."""

    tx: Transaction
    features: list[float]
    source: Source


@dataclass
class Ledger:
    """This worker's side of the protocol: batch numbers, the open batches, and the repairs to make.

    Batch numbers start at the clock in nanoseconds, so they are unique across restarts and workers:
    an entry numbered in ``(start, seq]`` is this worker's, any other one a previous owner's."""

    now_ms: Callable[[], int] = field(default=lambda: int(time.time() * 1000))
    seq: int = field(default_factory=time.time_ns)
    start: int = 0
    open_batches: set[int] = field(default_factory=set)
    repairs: list[Repair] = field(default_factory=list)
    repairs_since: int = 2**63

    def __post_init__(self) -> None:
        self.start = self.start or self.seq

    def open(self) -> int:
        """Step 1: a new batch's number; the batch stays open until :meth:`close`."""
        self.seq += 1
        self.open_batches.add(self.seq)
        return self.seq

    def close(self, seq: int) -> None:
        """Step 4: the batch's outputs are confirmed and its input acknowledged."""
        self.open_batches.discard(seq)

    def remember(self, entries: Mapping[str, LedgerEntry | None], txs: Sequence[Transaction],
                 rows: Sequence[list[float]], sources: Sequence[Source], seq: int) -> dict[str, LedgerEntry]:
        """Step 1: the new ledger entries of the cards that scored events in batch ``seq`` (and of those
        being repaired in it: still unconfirmed), from their current ``entries``. Entries of batches
        still open stay; confirmed ones go."""
        now = self.now_ms()
        fresh: dict[str, dict[str, Any]] = {}
        repairs = [(r.tx, r.features, r.source) for r in self.repairs]
        for tx, row, src in [*zip(txs, rows, sources, strict=True), *repairs]:
            fresh.setdefault(tx.card_id, {})[tx.tx_id] = [row, [src.topic, src.partition, src.offset,
                                                                src.timestamp_ms], seq]
        out: dict[str, LedgerEntry] = {}
        for card_id, tx_entries in fresh.items():
            previous = entries.get(card_id)
            if previous:
                tx_entries = {t: e for t, e in previous["tx"].items() if self.still_open(e, now)} | tx_entries
            out[card_id] = {"at": now, "tx": tx_entries}
        return out

    def still_open(self, tx_entry: list[Any], now: int) -> bool:
        """An entry of this worker's batches is open while its batch is. One of another worker's (a
        takeover) stays until its redelivery can no longer come: the card's other events may overtake that
        redelivery (re-keyed events of one card take several paths), and must not drop it."""
        if len(tx_entry) < 3:
            return False
        if self.start < tx_entry[2] <= self.seq:
            return tx_entry[2] in self.open_batches
        return bool(tx_entry[1][3] > now - LEDGER_MAX_AGE_MS)

    def recheck(self, tx: Transaction, entry: LedgerEntry | None) -> bool:
        """A redelivered duplicate: queue it for repair when its card's entry says its outputs may be
        missing (False: a plain duplicate)."""
        if not entry or tx.tx_id not in entry["tx"] or entry["at"] < self.now_ms() - LEDGER_MAX_AGE_MS:
            return False
        if any(r.tx.tx_id == tx.tx_id for r in self.repairs):
            return False
        row, src = entry["tx"][tx.tx_id][:2]
        source = Source(*src)
        self.repairs.append(Repair(tx, row, source))
        # The entry's "at" is the card's latest write: a later event of the card may have rewritten it after
        # this one's outputs went out. Its input message's timestamp is older than those outputs.
        self.repairs_since = min(self.repairs_since, entry["at"], source.timestamp_ms)
        return True

    def take_repairs(self) -> tuple[list[Repair], int]:
        """The queued repairs and the moment from which to read the output topics back."""
        items, self.repairs = self.repairs, []
        since, self.repairs_since = self.repairs_since - REPAIR_MARGIN_MS, 2**63
        return items, since


@dataclass(frozen=True, slots=True)
class Republish:
    """An output record a repair publishes again."""

    kind: str  # "score" | "alert"
    tx_id: str
    card_id: str
    index: int  # of the repaired item (its rescoring)


def plan_repair(items: Sequence[Repair], alert_due_if_unwitnessed: Sequence[bool],
                witnessed_scores: Mapping[bytes, list[bytes]], alerted_tx_ids: set[str]) -> list[Republish]:
    """What is missing of each repaired event's outputs. A witnessed score's own decision says whether an
    alert was due (the model may have changed since); an unwitnessed score is published again, with the
    alert its rescoring calls for (``alert_due_if_unwitnessed``)."""
    plan: list[Republish] = []
    for i, (item, due) in enumerate(zip(items, alert_due_if_unwitnessed, strict=True)):
        tx = item.tx
        witnessed = witnessed_scores.get(tx.tx_id.encode())
        if witnessed:
            due = orjson.loads(witnessed[0]).get("decision") in {"review", "decline"}
        else:
            plan.append(Republish("score", tx.tx_id, tx.card_id, i))
        if due and tx.tx_id not in alerted_tx_ids:
            plan.append(Republish("alert", tx.tx_id, tx.card_id, i))
    return plan


def witness_request(items: Sequence[Repair], scores_topic: str, alerts_topic: str) -> dict[str, set[bytes]]:
    """The keys to look for in the output topics: scores are keyed by tx_id, alerts by card."""
    return {scores_topic: {r.tx.tx_id.encode() for r in items}, alerts_topic: {r.tx.card_id.encode() for r in items}}


def alerted(found_alerts: Mapping[bytes, list[bytes]]) -> set[str]:
    """The tx_ids of the alert records read back."""
    return {orjson.loads(v).get("tx_id") for vs in found_alerts.values() for v in vs}
