"""What the worker decides for each input message, as pure functions (no Kafka, no Faust).

The agents (:mod:`stream_app.worker.score_agent`, :mod:`stream_app.worker.label_agent`) call these for every
message and only turn the outcome into sends and metrics, so the fuzz tests (``tests/unit/test_fuzz.py``,
``python -m stream_app.devtools.fuzz``) drive the worker's own decisions, not a copy. Every input ends as exactly
one outcome kind:

* transactions: ``scored`` (features computed; the caller scores), ``rekeyed`` (valid, but not keyed by
  its card or not in its card's partition: forwarded), ``dead_lettered`` (with a reason) or ``duplicate``;
* labels: ``joined`` (an example to learn), ``parked`` (its transaction has not been scored yet),
  ``rekeyed`` (valid, but not keyed by its card or not in its card's partition: forwarded),
  ``duplicate`` or ``dead_lettered``.

A card's state lives in one partition, :func:`card_partition` (Kafka's default partitioner, murmur2, as
the worker's producer uses it for the card tables' changelogs and the re-key topics):
the card tables' changelogs are written there, and the worker that owns that partition number owns the
card. Producers built on librdkafka (CRC-32) or sarama (FNV-1a) put a card's events elsewhere, and a
mix of producers splits them over several partitions; so an input message is re-keyed (through the
re-key topic, which the worker writes with murmur2) unless both its key and its partition are its
card's. The label join is local to the card's partition the same way: the scoring agent captures each
transaction's feature vector there (:func:`capture`), so the worker that scored a transaction is the
one that gets its label.
"""

from __future__ import annotations

import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Literal

from stream_app.domain.entities import EntityTable, model_row
from stream_app.domain.events import DuplicateEvent, InvalidEvent, Label, Transaction, parse_label, parse_transaction
from stream_app.domain.features import CardState, featurize, load_once
from stream_app.domain.learning import Captured, Example, Learned, ParkedLabel, read_captured
from stream_app.domain.pan import PanTokenizer
from stream_app.domain.partitioner import card_partition

TxKind = Literal["scored", "rekeyed", "dead_lettered", "duplicate"]
#: joined: learned; corrected: a later label that overrules the learned verdict, learned again; overruled: a later
#: contradicting label of lower precedence, ignored; duplicate: the same verdict again (or past the retention).
LabelKind = Literal["joined", "corrected", "overruled", "parked", "rekeyed", "duplicate", "dead_lettered"]
SEPARATOR = b"\x1f"  # in no card id or tx_id (both are [A-Za-z0-9_.:-] ids or card tokens)


def capture_key(card_id: str, tx_id: str) -> bytes:
    """Key of a transaction in the captured-features and parked-labels tables: card, then tx_id."""
    return card_id.encode() + SEPARATOR + tx_id.encode()


def card_of(key: bytes) -> bytes:
    """The card part of a :func:`capture_key`: the tables partition by it, like the card's transactions."""
    return key.rpartition(SEPARATOR)[0]


def in_card_partition(card_key: bytes, partition: int | None, partitions: int | None) -> bool:
    """``partition`` is the card's; True when there is nothing to check (``partition`` None: not read
    from a topic; ``partitions`` None: no partition check asked)."""
    return partition is None or partitions is None or partition == card_partition(card_key, partitions)


class Misrouted(InvalidEvent):
    """A message on a re-key topic outside its card's partition. The worker writes those topics keyed by
    card with murmur2, so only a foreign producer, or a re-key topic whose partition count differs from
    the card tables', puts one there; scoring it would split the card's state and forwarding it again
    could loop, so it is dead-lettered (replaying it to the input topic re-keys it)."""

    reason = "misrouted"

    @classmethod
    def at(cls, partition: int | None, partitions: int | None) -> Misrouted:
        return cls(f"read from partition {partition} of a re-key topic, not its card's "
                   f"(murmur2 of the card id mod {partitions})", "partition")


@dataclass(slots=True)
class TxOutcome:
    kind: TxKind
    tx: Transaction | None = None
    row: list[float] | None = None  # scored: the feature vector
    error: InvalidEvent | None = None  # dead_lettered: why
    forward: bytes | None = None  # rekeyed: the value to publish keyed by card (card numbers tokenized)
    decode_s: float = 0.0
    features_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Ingress:
    """The transaction path up to the features, with the worker's settings."""

    max_bytes: int
    horizon_ms: int
    pans: PanTokenizer
    input_topic: str  # messages on this topic not keyed by their card or not in its partition are re-keyed
    partitions: int  # of the card tables (and of the input and re-key topics): see card_partition
    entities: EntityTable = field(default_factory=EntityTable)  # read here; the caller observes what it scores

    def __call__(self, raw: bytes | None, key: bytes | None, topic: str, states: dict[str, CardState],
                 load_state: Callable[[str], CardState | None], *, partition: int | None) -> TxOutcome:
        """Parse, re-key or featurize one message; ``states`` holds the batch's card states (updated).
        ``partition``: the message's partition, None when it was not read from a topic (no partition check)."""
        t0 = time.perf_counter()
        try:
            tx = parse_transaction(raw or b"", self.max_bytes, self.pans)  # a null value is an empty message
        except InvalidEvent as exc:
            return TxOutcome("dead_lettered", error=exc, decode_s=time.perf_counter() - t0)
        t1 = time.perf_counter()
        card_key = tx.card_id.encode()
        placed = in_card_partition(card_key, partition, self.partitions)
        if topic == self.input_topic:
            if key != card_key or not placed:
                forward = self.pans.clean(raw or b"", tx.to_bytes)
                return TxOutcome("rekeyed", tx=tx, forward=forward, decode_s=t1 - t0)
        elif not placed:  # the re-key topic: never forwarded again
            return TxOutcome("dead_lettered", tx=tx, error=Misrouted.at(partition, self.partitions), decode_s=t1 - t0)
        load_once(states, tx.card_id, load_state)
        try:
            row = model_row(featurize(states, tx, self.horizon_ms), self.entities, tx)
        except DuplicateEvent:
            return TxOutcome("duplicate", tx=tx, decode_s=t1 - t0, features_s=time.perf_counter() - t1)
        except InvalidEvent as exc:
            return TxOutcome("dead_lettered", tx=tx, error=exc, decode_s=t1 - t0,
                             features_s=time.perf_counter() - t1)
        return TxOutcome("scored", tx=tx, row=row, decode_s=t1 - t0, features_s=time.perf_counter() - t1)


@dataclass(slots=True)
class LabelOutcome:
    kind: LabelKind
    label: Label | None = None
    error: InvalidEvent | None = None  # dead_lettered: why
    example: Example | None = None  # joined, corrected: what to append to the examples log
    forward: bytes | None = None  # rekeyed: the value to publish keyed by card (card numbers tokenized)


def learn_label(key: bytes, label: Label, captured: Captured, table: MutableMapping[bytes, bytes]) -> Example:
    """The joined example; the captured vector is kept with the learned verdict, so that a later label for
    the same tx_id is a duplicate, or a correction when it overrules the verdict."""
    table[key] = Learned(captured, label.is_fraud, label.source).to_bytes()
    return Example(label.tx_id, captured.features, label.is_fraud, captured.scores, label.source, label.label_ts_ms,
                   captured.entity, label.analyst)


def join_label(raw: bytes | None, key: bytes | None, source: tuple[str, int, int], now_ms: int, *,
               max_bytes: int, pans: PanTokenizer, captured: MutableMapping[bytes, bytes],
               parked: MutableMapping[bytes, bytes], input_topic: str | None = None,
               partitions: int | None = None) -> LabelOutcome:
    """One label against the captured-features and parked-labels tables (updated in place);
    ``source`` is (topic, partition, offset). A label read from ``input_topic`` whose message key is
    not its card id, or whose partition is not its card's (of ``partitions``; None: no partition check),
    is re-keyed instead: its card's partition may be another worker's. On any other topic (the re-key
    topic) a label outside its card's partition is dead-lettered (see :class:`Misrouted`)."""
    try:
        label = parse_label(raw or b"", max_bytes, pans)
    except InvalidEvent as exc:
        return LabelOutcome("dead_lettered", error=exc)
    card_key = label.card_id.encode()
    placed = in_card_partition(card_key, source[1], partitions)
    if source[0] == input_topic:
        if key != card_key or not placed:
            return LabelOutcome("rekeyed", label=label, forward=pans.clean(raw or b"", label.to_bytes))
    elif not placed:  # the re-key topic: never forwarded again
        return LabelOutcome("dead_lettered", label=label, error=Misrouted.at(source[1], partitions))
    tx_key = capture_key(label.card_id, label.tx_id)
    stored = captured.get(tx_key)
    vector = None if stored is None else read_captured(stored)
    if isinstance(vector, Learned):
        learned = vector
        if learned.captured is None or learned.is_fraud == label.is_fraud:
            return LabelOutcome("duplicate", label=label)
        if not label.corrects(learned.source, learned.is_fraud):
            return LabelOutcome("overruled", label=label)
        return LabelOutcome("corrected", label=label, example=learn_label(tx_key, label, learned.captured, captured))
    if vector is None:
        waiting = parked.get(tx_key)
        if waiting is not None:  # its transaction not scored yet: the label with precedence waits instead
            first = parse_label(ParkedLabel.from_bytes(waiting).raw, pans=pans)
            if first.is_fraud == label.is_fraud:
                return LabelOutcome("duplicate", label=label)
            if not label.corrects(first.source, first.is_fraud):
                return LabelOutcome("overruled", label=label)
        value = pans.clean(raw or b"", label.to_bytes)  # parked bytes go to a changelog topic
        parked[tx_key] = ParkedLabel(value, *source, None if key is None else pans.mask(key), now_ms).to_bytes()
        return LabelOutcome("parked", label=label)
    return LabelOutcome("joined", label=label, example=learn_label(tx_key, label, vector, captured))


def capture(key: bytes, vector: Captured, captured: MutableMapping[bytes, bytes], parked: MutableMapping[bytes, bytes],
            pans: PanTokenizer) -> Example | None:
    """A scored transaction's vector waits in ``captured`` for its label; a label that came first (parked)
    is joined now and its example returned."""
    stored = captured.get(key)
    if stored is not None and isinstance(read_captured(stored), Learned):
        return None  # its label was learned already (a repaired redelivery scores again)
    waiting = parked.get(key)
    if waiting is None:
        captured[key] = vector.to_bytes()
        return None
    del parked[key]
    return learn_label(key, parse_label(ParkedLabel.from_bytes(waiting).raw, pans=pans), vector, captured)
