"""End-to-end fuzzing: generated bad and valid messages through a running worker on a real broker.

``python -m stream_app.devtools.fuzz_e2e --n 20000`` starts the embedded broker (or uses ``--bootstrap``), creates
a run's own topics, starts one ``stream-app worker`` process, and sends ``n`` transaction messages, then
``n`` label messages, from :mod:`stream_app.devtools.fuzz`'s generators (every malformation the unit fuzzer knows,
keys in every spelling, null keys and values, redeliveries, late events, labels for scored and unknown
transactions), with random headers on some, plus messages of sizes from 0 bytes to twice a broker's
message limit. A ledger keeps one entry per message: what it is, the outcome the parser predicts, the
partition and offset the broker gave it, or ``refused`` with the error when the producer or the broker
refused it (it is not sent again).

Then it reads every topic the worker writes (scores, fraud-alerts, both dead-letter topics, the examples
log, the re-key topics, the tables' changelogs) until every message is accounted for or nothing new
came for ``--idle-s``, and checks, per message: ``scored`` (one score record per (card, tx_id), matched
by its source offset, or by tx_id when the worker re-keyed it), ``duplicate`` (no second score, no second
alert, no second example), ``dead_lettered`` with the predicted reason (matched by the source
topic/partition/offset the dead-letter record carries) or ``joined`` (labels, in the examples log);
whatever is none of these is ``lost``. It also scans every byte written (and the worker's log) for the
raw card numbers sent, checks the worker is alive and answers ``/health``, then measures how long it
takes to exit after SIGTERM. Prints counts per outcome and reason; the last line is machine-readable::

    RESULT sent=… refused=… scored=… duplicates=… dead_lettered=… lost=… unexpected=… alive=1 stop_s=… joined=… leaks=…

Broker limit, measured on Tansu 0.6.0 (memory storage): it has none — single records of 2, 32, 300 and
1023 MiB were accepted and read back, and the topic config ``max.message.bytes=1048588`` is ignored. So
the sizes go up to twice Apache Kafka's default ``message.max.bytes`` (1,048,588 bytes), which a real
broker refuses (ledgered as ``refused``); on Tansu they reach the worker. The fuzzer's own producer
refuses what is above ``2 × limit + 64 KiB`` (one message of the size ladder is, to cover that path).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import math
import signal
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from stream_app.devtools.fuzz import (
    FUZZ_KEY,
    HORIZON_MS,
    MAX_BYTES,
    PANS,
    Message,
    Mutator,
    label_messages,
    pan_pattern,
    transaction_messages,
)
from stream_app.devtools.worker_process import WorkerProcess, topic_env
from stream_app.domain.events import InvalidEvent, Label, Transaction, parse_label, parse_transaction
from stream_app.domain.features import SEEN_CAP
from stream_app.domain.learning import ParkedLabel
from stream_app.domain.pan import PanTokenizer, pan_digits
from stream_app.kafka.security import client_kwargs
from stream_app.settings import Settings

KAFKA_MESSAGE_MAX_BYTES = 1_048_588  # Apache Kafka's default message.max.bytes (Tansu 0.6.0 has no limit)
PRODUCER_SLACK = 65_536  # the fuzzer's producer takes up to 2 × limit + this (headers, batch framing)
LABEL_WAIT_S = 2.0  # the worker's STREAM_APP_LABEL_WAIT_S: labels of unknown tx_ids are dead-lettered soon
SIZED_SHARE = 0.01  # of the generated messages replaced by one of a random size in [1, 2 × limit]
HEADERS_SHARE = 0.2  # of the messages sent with generated headers
STOP_LIMIT_S = 10.0
_B64_FIELDS = ("original_b64", "key_b64")


def size_ladder(max_bytes: int, limit: int) -> tuple[int, ...]:
    """Message sizes every run sends on both input topics: empty, around the worker's limit, around the
    sizes that broke the dead-letter path (~750 KB), around and above a broker's limit, and one above
    what the fuzzer's producer takes."""
    return (0, 1, 2, 64, max_bytes - 1, max_bytes, max_bytes + 1, 65_536, 262_144, 700_000, 800_000, 900_000,
            1_000_000, 1_048_576, limit, limit + 1, 3 * limit // 2, 2 * limit, 2 * limit + 2 * PRODUCER_SLACK)


@dataclass(slots=True)
class Entry:
    """The ledger's record of one message sent."""

    kind: str  # "transactions" | "labels"
    what: str  # how it was made (the generator's name for it, or "size")
    size: int  # of the value
    key: bytes | None
    headers: int
    expected: str  # what the parser predicts: scored / joined / duplicate / dead_lettered:<reason>
    group: tuple[str, str] | None = None  # (card id as the worker keeps it, tx_id) of a valid event
    direct: bool = False  # keyed by its card: processed where it was sent (else re-keyed by the worker)
    ts_ms: int = 0  # valid transactions: event time
    card_sent: str = ""  # valid transactions: the card id as sent (labels are made from it)
    partition: int = -1
    offset: int = -1
    error: str = ""  # refused: why
    actual: str = ""  # what the worker did, filled by ``account``
    may_be_late: bool = False

    @property
    def refused(self) -> bool:
        return bool(self.error)


@dataclass
class Collected:
    """Every record read back, by topic: (partition, offset, key, value, headers)."""

    records: dict[str, list[tuple[int, int, bytes | None, bytes | None, list[tuple[str, bytes]]]]] = \
        field(default_factory=lambda: defaultdict(list))
    parsed: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    last_at: float = field(default_factory=time.monotonic)
    count: int = 0


class Reader:
    """A consumer without group reading every partition of ``topics`` from the start, in the background
    (a read until idle: Tansu's end offsets are wrong, see the shared notes)."""

    def __init__(self, bootstrap: str, topics: list[str], json_topics: set[str], **client: Any) -> None:
        self.bootstrap = bootstrap
        self.topics = topics
        self.json_topics = json_topics
        self.out = Collected()
        self._consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                          auto_offset_reset="earliest", fetch_max_wait_ms=50,
                                          max_partition_fetch_bytes=8 * 2**20, **client)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._consumer.start()
        await self._consumer.topics()
        tps = [TopicPartition(t, p) for t in self.topics for p in sorted(self._consumer.partitions_for_topic(t) or ())]
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        out = self.out
        while True:
            batches = await self._consumer.getmany(timeout_ms=200, max_records=5000)
            for tp, messages in batches.items():
                for m in messages:
                    headers = [(k, v) for k, v in m.headers or ()]
                    out.records[tp.topic].append((m.partition, m.offset, m.key, m.value, headers))
                    if tp.topic in self.json_topics:
                        out.parsed[tp.topic].append(orjson.loads(m.value or b"null"))
                    out.count += 1
                    out.last_at = time.monotonic()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        try:
            await self._consumer.stop()
        except asyncio.CancelledError:  # aiokafka re-raises the cancellation of a fetch in its retry back-off
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise


@dataclass(frozen=True)
class Names:
    """Topics of the run (from the worker's settings)."""

    transactions: str
    rekeyed: str
    dlq: str
    scores: str
    alerts: str
    labels: str
    labels_rekeyed: str
    labels_dlq: str
    examples: str

    @classmethod
    def of(cls, s: Settings) -> Names:
        return cls(s.transactions_topic, s.rekeyed_topic, s.dlq_topic, s.scores_topic, s.alerts_topic,
                   s.labels_topic, s.labels_rekeyed_topic, s.labels_dlq_topic, s.examples_topic)


class Ledger:
    """One entry per message sent, with the parser's prediction; ``account`` matches what was read back."""

    def __init__(self, pans: PanTokenizer, max_bytes: int) -> None:
        self.pans = pans
        self.max_bytes = max_bytes
        self.entries: list[Entry] = []
        self.issues: list[str] = []  # unexpected outputs, filled by ``account``

    def predict(self, kind: str, message: Message, what: str) -> Entry | None:
        """The entry of ``message`` before it is sent: the outcome its bytes alone decide. None for a valid
        event whose tx_id or merchant_id holds a card number: such ids are the producer's, kept as sent
        (docs/how-to/security.md, card numbers), so the fuzzer does not send them and its leak scan needs no
        exceptions."""
        raw = message.value or b""  # the worker reads a null value as an empty message
        entry = Entry(kind, what, len(raw), message.key, 0, "")
        try:
            event: Transaction | Label = (parse_transaction(raw, self.max_bytes, self.pans) if kind == "transactions"
                                          else parse_label(raw, self.max_bytes, self.pans))
        except InvalidEvent as exc:
            entry.expected = f"dead_lettered:{exc.reason}"
            return entry
        ids = [event.tx_id] + ([event.merchant_id] if isinstance(event, Transaction) else [])
        if any(self.pans.mask(i.encode()) != i.encode() for i in ids):
            return None
        entry.group = (event.card_id, event.tx_id)
        entry.direct = message.key == event.card_id.encode()
        if isinstance(event, Transaction):
            entry.ts_ms = event.ts_ms
            entry.card_sent = str(orjson.loads(raw)["card_id"])
        return entry

    def expect_order(self, kind: str, scored: set[tuple[str, str]] | None = None) -> None:
        """Expected outcomes that depend on the other messages: the first of a (card, tx_id) is scored
        (joined, or dead-lettered unknown_tx for a label of a transaction never scored), the others are
        duplicates; a transaction may be late (dead-lettered late_event) when its card has an event more
        than the horizon newer, or more newer ones than its de-duplication memory."""
        seen: set[tuple[str, str]] = set()
        valid = [e for e in self.entries if e.kind == kind and e.group is not None and not e.refused]
        for e in valid:
            if e.group in seen:
                e.expected = "duplicate"
            elif kind == "transactions":
                e.expected = "scored"
            else:
                e.expected = "joined" if scored is not None and e.group in scored else "dead_lettered:unknown_tx"
            seen.add(e.group)  # type: ignore[arg-type]
        if kind != "transactions":
            return
        by_card: dict[str, list[int]] = defaultdict(list)
        for e in valid:
            by_card[e.group[0]].append(e.ts_ms)  # type: ignore[index]
        for times in by_card.values():
            times.sort()
        for e in valid:
            times = by_card[e.group[0]]  # type: ignore[index]
            newer = len(times) - bisect.bisect_right(times, e.ts_ms)
            e.may_be_late = times[-1] > e.ts_ms + HORIZON_MS or newer >= SEEN_CAP
            if e.may_be_late and e.what == "late" and e.expected == "scored":
                e.expected = "dead_lettered:late_event"

    # -- matching what was read back -------------------------------------------------------------------
    def account(self, out: Collected, names: Names) -> None:
        """Fill each entry's ``actual`` from the records read so far and collect ``issues``."""
        self.issues = []
        for entry in self.entries:
            entry.actual = "refused" if entry.refused else ""
        at = {(e.kind, e.partition, e.offset): e for e in self.entries if not e.refused}
        groups: dict[tuple[str, tuple[str, str]], list[Entry]] = defaultdict(list)
        for entry in self.entries:
            if entry.group is not None and not entry.refused:
                groups[(entry.kind, entry.group)].append(entry)

        def rekeyed_member(kind: str, group: tuple[str, str] | None) -> Entry | None:
            return next((e for e in groups.get((kind, group), []) if not e.direct and not e.actual), None) \
                if group is not None else None

        for kind, dlq, input_topic, rekey_topic in (("transactions", names.dlq, names.transactions, names.rekeyed),
                                                    ("labels", names.labels_dlq, names.labels, names.labels_rekeyed)):
            for record in out.parsed[dlq]:
                src = record.get("source", {})
                if src.get("topic") == input_topic:
                    e = at.get((kind, src.get("partition"), src.get("offset")))
                    # (a parked label is kept cleaned: its card number tokenized, its size changed)
                    if e is not None and record.get("reason") != "unknown_tx" \
                            and record.get("original_size", e.size) != e.size:
                        self.issues.append(f"{dlq}: original_size {record.get('original_size')} != {e.size} "
                                           f"sent at {src}")
                elif src.get("topic") == rekey_topic:
                    e = rekeyed_member(kind, self._group_of_original(record))
                else:
                    e = None
                if e is None or e.actual:
                    self.issues.append(f"{dlq}: record matches no message waiting for one: source={src} "
                                       f"reason={record.get('reason')}")
                    continue
                e.actual = f"dead_lettered:{record.get('reason')}"

        for record in out.parsed[names.scores]:
            src, group = record.get("source", {}), (record.get("card_id"), record.get("tx_id"))
            if src.get("topic") == names.transactions:
                e = at.get(("transactions", src.get("partition"), src.get("offset")))
                e = e if e is not None and e.group == group else None
            else:
                e = rekeyed_member("transactions", group)  # type: ignore[arg-type]
            if e is None or e.actual:
                self.issues.append(f"{names.scores}: a score record matches no message waiting for one "
                                   f"(a second score?): tx_id={group[1]} source={src}")
                continue
            e.actual = "scored"
        scored = set()
        for (kind, group), members in groups.items():
            n = sum(e.actual == "scored" for e in members) if kind == "transactions" else 0
            if n:
                scored.add(group)
            if n > 1:
                self.issues.append(f"{names.scores}: {n} score records for tx_id={group[1]} (a second score)")
        alerts = Counter((a.get("card_id"), a.get("tx_id")) for a in out.parsed[names.alerts])
        for group, n in alerts.items():
            if n > 1 or group not in scored:
                self.issues.append(f"{names.alerts}: {n} alert(s) for tx_id={group[1]}, scored={group in scored}")

        examples = Counter(x.get("tx_id") for x in out.parsed[names.examples])
        for (kind, group), members in groups.items():
            if kind == "labels" and group in scored and examples[group[1]] > 0:
                first = next((e for e in members if not e.actual), None)
                if first is not None:
                    examples[group[1]] -= 1
                    first.actual = "joined"
        for tx_id, n in examples.items():
            if n > 0:
                self.issues.append(f"{names.examples}: {n} example(s) for tx_id={tx_id} beyond its labels' groups")

        for (kind, group), members in groups.items():
            if kind == "transactions":
                settled = group in scored
                allowed = {"scored", "duplicate"}
            else:
                settled = any(e.actual in {"joined", "dead_lettered:unknown_tx"} for e in members)
                allowed = {"joined", "duplicate"} if group in scored else {"dead_lettered:unknown_tx", "duplicate"}
            for e in members:
                if not e.actual:
                    e.actual = "duplicate" if settled else "lost"
                elif e.actual not in allowed and not (e.may_be_late and e.actual == "dead_lettered:late_event"):
                    self.issues.append(f"{e.kind}: {e.what} message at {e.partition}/{e.offset} was {e.actual}, "
                                       f"expected {e.expected}")
        for e in self.entries:
            if e.group is None and not e.actual:
                e.actual = "lost"
            elif e.group is None and e.actual not in {e.expected, "refused"}:
                self.issues.append(f"{e.kind}: {e.what} message at {e.partition}/{e.offset} was {e.actual}, "
                                   f"expected {e.expected}")

    def _group_of_original(self, record: dict[str, Any]) -> tuple[str, str] | None:
        """(card, tx_id) of a dead-lettered re-keyed event, from the original bytes the record keeps, read
        leniently: the worker may refuse the bytes it re-keyed, which is then what is reported."""
        try:
            obj = orjson.loads(base64.b64decode(record.get("original_b64") or ""))
        except ValueError:
            return None
        card, tx_id = (obj.get("card_id"), obj.get("tx_id")) if isinstance(obj, dict) else (None, None)
        if not isinstance(card, str) or not isinstance(tx_id, str):
            return None
        digits = pan_digits(card)
        return (card if digits is None else self.pans.token(digits) or card), tx_id

    def pending(self, kind: str | None = None) -> int:
        return sum(1 for e in self.entries if e.actual == "lost" and (kind is None or e.kind == kind))


# -- generating and sending ----------------------------------------------------------------------------
def fuzz_messages(kind: str, mut: Mutator, n: int, ledger: Ledger, limit: int,
                  scored: list[tuple[str, str]]) -> Iterator[tuple[Message, Entry]]:
    """``n`` messages of the shared generators, some replaced by one of a random size, then the size
    ladder spread over the run; each with its ledger entry (not yet in the ledger)."""
    rng = mut.rng
    base = transaction_messages(mut, 10 * n) if kind == "transactions" else label_messages(mut, 10 * n, scored)
    ladder = list(size_ladder(ledger.max_bytes, limit))
    every = max(1, n // len(ladder))
    made = 0
    while made < n or ladder:
        if ladder and made % every == 0:
            size = ladder.pop(0)
            message, what = _sized(mut, kind, scored, size), f"size:{size}"
        elif rng.random() < SIZED_SHARE:
            size = int(math.exp(rng.uniform(0, math.log(2 * limit))))
            message, what = _sized(mut, kind, scored, size), "size:random"
        else:
            message = next(base)
            what = message.what
        entry = ledger.predict(kind, message, what)
        if entry is not None:
            made += 1
            yield message, entry


def _sized(mut: Mutator, kind: str, scored: list[tuple[str, str]], size: int) -> Message:
    """A valid event padded (or cut) to ``size`` bytes, keyed by its card."""
    obj = mut.valid_tx() if kind == "transactions" else mut.valid_label(scored)
    return Message("size", mut.sized(obj, size), str(obj["card_id"]).encode())


async def send_all(producer: AIOKafkaProducer, topic: str, items: Iterable[tuple[Message, Entry]], mut: Mutator,
                   ledger: Ledger, log: Callable[[str], None]) -> None:
    """Send each message (some with generated headers) and ledger it with the partition and offset the
    broker gave it, or as refused with the error (never sent again)."""
    waiting = []
    for i, (message, entry) in enumerate(items, 1):
        headers = mut.headers() if mut.rng.random() < HEADERS_SHARE else []
        entry.headers = len(headers)
        ledger.entries.append(entry)
        try:
            future = await producer.send(topic, message.value, key=message.key, headers=headers or None)
        except (KafkaError, AssertionError) as exc:  # too large, or no key and no value (aiokafka asserts)
            entry.error = f"producer: {exc!r}"[:300]
            continue
        waiting.append((entry, future))
        if i % 5000 == 0:
            log(f"{topic}: {i} sent")
    for entry, future in waiting:
        try:
            metadata = await future
        except KafkaError as exc:  # refused by the broker
            entry.error = f"broker: {exc!r}"[:300]
            continue
        entry.partition, entry.offset = metadata.partition, metadata.offset


async def settle(ledger: Ledger, reader: Reader, names: Names, worker: WorkerProcess, kind: str | None,
                 idle_s: float, log: Callable[[str], None], quiet_s: float = 3.0) -> None:
    """Read until every message of ``kind`` is accounted for and nothing new came for ``quiet_s``, or
    nothing new came for ``idle_s`` (3 s once the worker is dead)."""
    shown = time.monotonic()
    while True:
        await asyncio.sleep(1.0)
        ledger.account(reader.out, names)
        pending = ledger.pending(kind)
        idle = time.monotonic() - reader.out.last_at
        if time.monotonic() - shown >= 5:
            log(f"waiting: {pending} {kind or 'messages'} not accounted for yet, {reader.out.count} records read, "
                f"idle {idle:.0f} s")
            shown = time.monotonic()
        alive = worker.process is not None and worker.process.poll() is None
        if (pending == 0 and idle >= quiet_s) or idle >= (idle_s if alive else min(idle_s, 3.0)):
            return


_PATTERNS = [pan_pattern(pan) for pan in PANS]


def card_number_leaks(out: Collected) -> list[str]:
    """Where a raw card number sent (any spelling) appears in what the worker wrote: any record's key,
    value, header, or the base64 bytes of a dead-letter record (original, key) or of a parked label."""
    found = []

    def chunks(topic: str, key: bytes | None, value: bytes | None,
               headers: list[tuple[str, bytes]]) -> Iterator[bytes]:
        yield from (key or b"", value or b"")
        for name, header in headers:
            yield from (name.encode(), header or b"")
        if value and topic.endswith("parked-labels-changelog"):
            parked = ParkedLabel.from_bytes(value)
            yield from (parked.raw, parked.key or b"")
        elif value and value.startswith(b"{") and b"_b64" in value:
            record = orjson.loads(value)
            for name in _B64_FIELDS:
                yield base64.b64decode(record.get(name) or "")

    for topic, records in out.records.items():
        for partition, offset, key, value, headers in records:
            if any(p.search(c) for c in chunks(topic, key, value, headers) for p in _PATTERNS):
                found.append(f"{topic} {partition}/{offset}")
    return found


def schema_violations(out: Collected, names: Names) -> list[str]:
    """Records that break their published JSON Schema (scores, alerts, dead letters), and examples whose
    features are not all numbers (the learner cannot learn them)."""
    import jsonschema

    from stream_app.domain.schemas import load_schema

    found = []
    for topic, schema in ((names.scores, "score"), (names.alerts, "alert"), (names.dlq, "dead_letter"),
                          (names.labels_dlq, "dead_letter")):
        validator = jsonschema.Draft202012Validator(load_schema(schema))
        for record in out.parsed[topic]:
            error = jsonschema.exceptions.best_match(validator.iter_errors(record))
            if error is not None:
                found.append(f"{topic}: tx_id={record.get('tx_id')} {error.json_path}: {error.message[:200]}")
    for example in out.parsed[names.examples]:
        features = example.get("features")
        if not isinstance(features, list) or not all(isinstance(v, int | float) for v in features):
            found.append(f"{names.examples}: tx_id={example.get('tx_id')} features {str(features)[:200]}")
    return found


def log_leaks(log: bytes) -> list[str]:
    return [f"worker log line {i}" for i, line in enumerate(log.splitlines(), 1)
            if any(p.search(line) for p in _PATTERNS)]


# -- the run ---------------------------------------------------------------------------------------------
@dataclass
class Report:
    entries: list[Entry]
    issues: list[str]
    leaks: list[str] = field(default_factory=list)
    alive: bool = False
    health: bool = False
    stop_s: float = -1.0
    exit_code: int | None = None
    seconds: float = 0.0
    workdir: Path | None = None
    worker_errors: list[str] = field(default_factory=list)  # its first error-level log lines

    def count(self, outcome: str, kind: str | None = None) -> int:
        return sum(1 for e in self.entries
                   if (e.actual == outcome or e.actual.startswith(outcome + ":")) and kind in (None, e.kind))

    @property
    def ok(self) -> bool:
        return (self.count("lost") == 0 and not self.issues and not self.leaks and self.alive and self.health
                and 0 <= self.stop_s <= STOP_LIMIT_S)

    def lines(self) -> list[str]:
        out = []
        for kind in ("transactions", "labels"):
            mine = [e for e in self.entries if e.kind == kind]
            outcomes = Counter(e.actual.split(":")[0] for e in mine)
            out.append(f"{kind}: sent={len(mine)} " + " ".join(f"{k}={v}" for k, v in sorted(outcomes.items())))
            reasons = Counter(e.actual.split(":", 1)[1] for e in mine if e.actual.startswith("dead_lettered:"))
            out += [f"  {kind} dead-lettered {reason}: {n}" for reason, n in reasons.most_common()]
            out += [f"  {kind} lost: {e.what} size={e.size} at {e.partition}/{e.offset} expected {e.expected}"
                    for e in [e for e in mine if e.actual == "lost"][:10]]
            out += [f"  {kind} {e.what}: {e.actual}" + (f" ({e.error})" if e.error else "")
                    for e in mine if e.what.startswith("size:") and e.what != "size:random"]
            other = Counter((e.expected, e.actual) for e in mine if e.actual not in {e.expected, "refused", "lost"})
            out += [f"  {kind} predicted {expected}, was {actual}: {n}"
                    for (expected, actual), n in sorted(other.items())]
        out += [f"UNEXPECTED {issue}" for issue in self.issues[:20]]
        out += [f"LEAK card number in {where}" for where in self.leaks[:20]]
        out += [f"WORKER ERROR {line}" for line in self.worker_errors]
        out.append(f"worker: alive={int(self.alive)} health={int(self.health)} stop_s={self.stop_s:.1f} "
                   f"exit_code={self.exit_code} log={self.workdir}")
        return out

    def result_line(self) -> str:
        return (f"RESULT sent={len(self.entries)} refused={self.count('refused')} scored={self.count('scored')} "
                f"duplicates={self.count('duplicate')} dead_lettered={self.count('dead_lettered')} "
                f"lost={self.count('lost')} unexpected={len(self.issues)} alive={int(self.alive and self.health)} "
                f"stop_s={self.stop_s:.1f} joined={self.count('joined')} leaks={len(self.leaks)} "
                f"seconds={self.seconds:.0f}")


def _stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run(bootstrap: str, n: int, workdir: Path, *, seed: int = 0, partitions: int = 4,
        limit: int = KAFKA_MESSAGE_MAX_BYTES, idle_s: float = 20.0, log: Callable[[str], None] = _stderr) -> Report:
    """The whole run against the broker at ``bootstrap``: topics, one worker, ``n`` transactions then
    ``n`` labels (plus the size ladder of each), the check, SIGTERM."""
    from stream_app.cli import create_topics

    started = time.monotonic()
    prefix = f"fuzz-{uuid.uuid4().hex[:8]}"
    env = {**topic_env(prefix, partitions), "STREAM_APP_PAN_KEY": FUZZ_KEY.decode(),
           "STREAM_APP_MAX_MESSAGE_BYTES": str(MAX_BYTES), "STREAM_APP_LABEL_WAIT_S": str(LABEL_WAIT_S),
           "STREAM_APP_DEDUP_HORIZON_S": str(HORIZON_MS // 1000)}
    settings = Settings.from_env({**env, "KAFKA_BOOTSTRAP_SERVERS": bootstrap})
    create_topics(settings)
    worker = WorkerProcess(bootstrap, workdir, env).start()
    try:
        worker.wait_ready()
        log(f"worker ready ({time.monotonic() - started:.0f} s); sending {n} transactions")
        report = asyncio.run(_traffic(bootstrap, settings, worker, n, seed, limit, idle_s, log))
        report.alive = worker.process is not None and worker.process.poll() is None
        report.health = report.alive and _health(worker.web_port)
        if report.alive:
            t0 = time.monotonic()
            worker.stop(signal.SIGTERM, timeout_s=3 * STOP_LIMIT_S)
            report.stop_s = time.monotonic() - t0
        report.exit_code = None if worker.process is None else worker.process.returncode
    finally:
        worker.stop()
    log_bytes = worker.log_path.read_bytes()
    report.leaks += log_leaks(log_bytes)
    report.worker_errors = [line[:400].decode(errors="replace") for line in log_bytes.splitlines()
                            if b'"level": "error"' in line or b'"level": "critical"' in line][:5]
    report.seconds = time.monotonic() - started
    report.workdir = workdir
    return report


async def _traffic(bootstrap: str, settings: Settings, worker: WorkerProcess, n: int, seed: int, limit: int,
                   idle_s: float, log: Callable[[str], None]) -> Report:
    names = Names.of(settings)
    ledger = Ledger(PanTokenizer(FUZZ_KEY), MAX_BYTES)
    client = client_kwargs(settings)  # a --bootstrap cluster may need TLS/SASL, like the worker
    admin = AIOKafkaConsumer(bootstrap_servers=bootstrap, **client)
    await admin.start()
    try:
        changelogs = sorted(t for t in await admin.topics()
                            if t.startswith(f"{settings.app_id}-") and t.endswith("-changelog"))
    finally:
        await admin.stop()
    outputs = [names.scores, names.alerts, names.dlq, names.labels_dlq, names.examples, names.rekeyed,
               names.labels_rekeyed, *changelogs]
    reader = Reader(bootstrap, outputs, {names.scores, names.alerts, names.dlq, names.labels_dlq, names.examples},
                    **client)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5,
                                max_request_size=2 * limit + PRODUCER_SLACK, request_timeout_ms=60_000, **client)
    await reader.start()
    await producer.start()
    try:
        mut = Mutator(seed)
        await send_all(producer, names.transactions, fuzz_messages("transactions", mut, n, ledger, limit, []),
                       mut, ledger, log)
        ledger.expect_order("transactions")
        await settle(ledger, reader, names, worker, "transactions", idle_s, log)
        scored = [(e.group[1], e.card_sent) for e in ledger.entries  # type: ignore[index]
                  if e.kind == "transactions" and e.actual == "scored"]
        log(f"transactions accounted for ({len(scored)} scored); sending {n} labels")
        mut = Mutator(seed + 1)
        await send_all(producer, names.labels, fuzz_messages("labels", mut, n, ledger, limit, scored),
                       mut, ledger, log)
        ledger.expect_order("labels", {e.group for e in ledger.entries
                                       if e.kind == "transactions" and e.actual == "scored" and e.group})
        await settle(ledger, reader, names, worker, None, idle_s, log)
        ledger.account(reader.out, names)
        return Report(ledger.entries, ledger.issues + schema_violations(reader.out, names),
                      card_number_leaks(reader.out))
    finally:
        await producer.stop()
        await reader.stop()


def _health(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stream_app.devtools.fuzz_e2e",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="messages of each kind (transactions, labels)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", default="", help="a running broker (default: start the embedded one)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--limit", type=int, default=KAFKA_MESSAGE_MAX_BYTES,
                        help="a broker's message limit: sizes go up to twice it")
    parser.add_argument("--idle-s", type=float, default=20.0,
                        help="stop reading when nothing new came for this long (messages left are lost)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="the worker's data and log (default: a new temp dir)")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fuzz-e2e-"))
    workdir.mkdir(parents=True, exist_ok=True)

    def go(bootstrap: str) -> Report:
        return run(bootstrap, args.n, workdir, seed=args.seed, partitions=args.partitions, limit=args.limit,
                   idle_s=args.idle_s)

    if args.bootstrap:
        report = go(args.bootstrap)
    else:
        from stream_app.devtools.broker import EmbeddedBroker

        with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
            report = go(broker.bootstrap)
    for line in report.lines():
        print(line)
    print(report.result_line())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
