"""The ledger of a load run and the checker that accounts for every entry of it.

Checked like Kafka's exactly-once system tests and Jepsen: the load generator writes one JSON line per
event it sent (``{"tx_id": …, "valid": true/false, "sent_ms": …}``, plus ``partition`` and ``offset``
of the input message when the sender knows them); after the run the checker reads ``scores``,
``fraud-alerts`` and the DLQ from the start until idle and proves each entry accounted for:

- a valid event needs at least one score record (none: **lost**; more than one: a duplicate score,
  allowed by at-least-once delivery and reported as a figure — ``scores`` is keyed by ``tx_id``);
- a malformed event needs a dead-letter record; matched by the input position (topic/partition/offset,
  which the DLQ record keeps) when the ledger has it, else by the ``tx_id`` found in the original bytes,
  else only counted (a variant like ``b"\\x00\\xffgarbage"`` carries no tx_id);
- at most one alert per ``tx_id`` (more: **duplicate alerts**).

Outputs are read until every partition has caught up with the high watermark of a fetch and nothing
arrived for ``idle_s``: never ``end_offsets`` (wrong on the embedded broker, see shared notes).
"""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    tx_id: str
    valid: bool
    sent_ms: int
    partition: int | None = None  # of the input message, when the sender knows it
    offset: int | None = None

    def to_json(self) -> bytes:
        d: dict[str, Any] = {"tx_id": self.tx_id, "valid": self.valid, "sent_ms": self.sent_ms}
        if self.partition is not None:
            d["partition"], d["offset"] = self.partition, self.offset
        return orjson.dumps(d)


class LedgerWriter:
    """Appends entries as JSON lines (flushed per write: a killed run keeps what it had sent)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] = path.open("ab")

    def write(self, entry: LedgerEntry) -> None:
        self._file.write(entry.to_json() + b"\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_ledger(path: Path) -> list[LedgerEntry]:
    """Entries of a JSONL ledger; a torn last line (a killed writer) is skipped."""
    entries = []
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            d = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        entries.append(LedgerEntry(str(d["tx_id"]), bool(d["valid"]), int(d.get("sent_ms", 0)),
                                   d.get("partition"), d.get("offset")))
    return entries


@dataclass(frozen=True, slots=True)
class OutputRecord:
    partition: int
    offset: int
    timestamp_ms: int
    value: dict[str, Any]
    key: bytes | None = None
    raw: bytes | None = None  # the value as stored (binary values, such as card states)


@dataclass
class Outputs:
    """Records of the output topics, in partition then offset order."""

    scores: list[OutputRecord] = field(default_factory=list)
    alerts: list[OutputRecord] = field(default_factory=list)
    dlq: list[OutputRecord] = field(default_factory=list)
    unreadable: int = 0


async def read_all(bootstrap: str, topics: Iterable[str], *, idle_s: float = 2.0,
                   timeout_s: float = 120.0) -> dict[str, list[OutputRecord]]:
    """Every record of ``topics`` from offset 0, until each partition is at its fetch high watermark
    and nothing arrived for ``idle_s`` (or ``timeout_s`` passed). Values are decoded JSON objects;
    an undecodable value becomes ``{"_unreadable": true}`` (``raw`` has the bytes)."""
    names = list(topics)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=100)
    await consumer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(t, p) for t in names for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        out: dict[str, list[OutputRecord]] = {t: [] for t in names}
        position = {tp: 0 for tp in tps}
        deadline = time.monotonic() + timeout_s
        last_data = time.monotonic()
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200, max_records=20_000)
            for tp, messages in batches.items():
                last_data = time.monotonic()
                for m in messages:
                    try:
                        value = orjson.loads(m.value) if m.value is not None else {"_unreadable": True}
                    except orjson.JSONDecodeError:
                        value = {"_unreadable": True}
                    out[tp.topic].append(OutputRecord(m.partition, m.offset, m.timestamp, value, m.key, m.value))
                    position[tp] = m.offset + 1
            caught_up = all((hw := consumer.highwater(tp)) is not None and position[tp] >= hw for tp in tps)
            if caught_up and time.monotonic() - last_data >= idle_s:
                break
        for records in out.values():
            records.sort(key=lambda r: (r.partition, r.offset))
        return out
    finally:
        await consumer.stop()


async def read_outputs(bootstrap: str, scores_topic: str, alerts_topic: str, dlq_topic: str, *,
                       idle_s: float = 2.0, timeout_s: float = 120.0) -> Outputs:
    got = await read_all(bootstrap, [scores_topic, alerts_topic, dlq_topic], idle_s=idle_s, timeout_s=timeout_s)
    return Outputs(got[scores_topic], got[alerts_topic], got[dlq_topic])


_TX_ID = re.compile(rb'"tx_id"\s*:\s*"([A-Za-z0-9_.:-]{1,64})"')


def _dlq_tx_id(record: dict[str, Any]) -> str | None:
    try:
        raw = base64.b64decode(record.get("original_b64") or "")
    except ValueError:
        return None
    match = _TX_ID.search(raw)
    return match.group(1).decode() if match else None


@dataclass
class Check:
    """The checker's verdict; ``ok`` when nothing was lost and no alert was duplicated."""

    sent: int = 0
    valid: int = 0
    malformed: int = 0
    scored: int = 0  # valid ledger entries with at least one score record
    duplicate_scores: int = 0  # score records beyond the first per tx_id
    dlq: int = 0  # malformed ledger entries accounted for by a dead-letter record
    alerts: int = 0
    duplicate_alerts: int = 0  # alert records beyond the first per tx_id
    lost_valid: list[str] = field(default_factory=list)
    lost_malformed: list[str] = field(default_factory=list)
    unexpected_scores: int = 0  # score records for tx_ids not in the ledger (another run's?)
    duplicated_alert_ids: list[str] = field(default_factory=list)
    duplicated_score_ids: list[str] = field(default_factory=list)  # with where each record is

    @property
    def lost(self) -> int:
        return len(self.lost_valid) + len(self.lost_malformed)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicate_alerts == 0

    def lines(self) -> Iterator[str]:
        yield (f"ledger: {self.sent} sent ({self.valid} valid, {self.malformed} malformed); "
               f"scored {self.scored}, duplicate score records {self.duplicate_scores}, "
               f"unexpected score records {self.unexpected_scores}")
        yield (f"dlq: {self.dlq} of {self.malformed} malformed accounted for; alerts {self.alerts}, "
               f"duplicate alerts {self.duplicate_alerts}")
        if self.lost_valid:
            yield f"LOST valid ({len(self.lost_valid)}): {', '.join(self.lost_valid[:10])}"
        if self.lost_malformed:
            yield f"LOST malformed ({len(self.lost_malformed)}): {', '.join(self.lost_malformed[:10])}"
        if self.duplicated_alert_ids:
            yield f"DUPLICATE alerts for: {', '.join(self.duplicated_alert_ids[:10])}"
        if self.duplicated_score_ids:
            yield f"DUPLICATE scores for: {', '.join(self.duplicated_score_ids[:10])}"


def check(ledger: list[LedgerEntry], outputs: Outputs, input_topic: str | None = None) -> Check:
    """Account for every ledger entry in the outputs (see the module docstring).

    ``input_topic`` names the topic the ledger's positions refer to: DLQ records from other topics
    (e.g. the re-key topic) are then matched by tx_id only."""
    result = Check(sent=len(ledger))
    score_counts = Counter(str(r.value.get("tx_id")) for r in outputs.scores)
    alert_counts = Counter(str(r.value.get("tx_id")) for r in outputs.alerts)
    dlq_positions = set()
    dlq_ids: Counter[str] = Counter()
    unmatched_dlq = 0
    for r in outputs.dlq:
        src = r.value.get("source") or {}
        if input_topic is None or src.get("topic") == input_topic:
            dlq_positions.add((src.get("partition"), src.get("offset")))
        tx_id = _dlq_tx_id(r.value)
        if tx_id is not None:
            dlq_ids[tx_id] += 1
        else:
            unmatched_dlq += 1
    ledger_ids = set()
    anonymous: list[str] = []  # malformed entries only countable (no position, no tx_id in the DLQ)
    for e in ledger:
        ledger_ids.add(e.tx_id)
        if e.valid:
            result.valid += 1
            n = score_counts.get(e.tx_id, 0)
            if n == 0:
                result.lost_valid.append(e.tx_id)
            else:
                result.scored += 1
                result.duplicate_scores += n - 1
                if n > 1:
                    where = [f"p{r.partition}@{r.offset} t={r.timestamp_ms}" for r in outputs.scores
                             if r.value.get("tx_id") == e.tx_id]
                    result.duplicated_score_ids.append(f"{e.tx_id} ({', '.join(where)})")
        else:
            result.malformed += 1
            if e.partition is not None and (e.partition, e.offset) in dlq_positions:
                result.dlq += 1
            elif dlq_ids.get(e.tx_id, 0) > 0:
                dlq_ids[e.tx_id] -= 1
                result.dlq += 1
            else:
                anonymous.append(e.tx_id)
    if anonymous and all(e.partition is None for e in ledger if not e.valid):
        matched = min(len(anonymous), unmatched_dlq)  # counted, not identified
        result.dlq += matched
        anonymous = anonymous[matched:]
    result.lost_malformed = anonymous
    result.unexpected_scores = sum(n for tx_id, n in score_counts.items() if tx_id not in ledger_ids)
    result.alerts = len(outputs.alerts)
    result.duplicated_alert_ids = sorted(t for t, n in alert_counts.items() if n > 1)
    result.duplicate_alerts = sum(n - 1 for n in alert_counts.values() if n > 1)
    return result


def check_files(bootstrap: str, ledger_path: Path, scores_topic: str, alerts_topic: str, dlq_topic: str,
                input_topic: str | None = None, idle_s: float = 2.0) -> Check:
    """Synchronous convenience: read the ledger file and the topics, then check."""
    outputs = asyncio.run(read_outputs(bootstrap, scores_topic, alerts_topic, dlq_topic, idle_s=idle_s))
    return check(read_ledger(ledger_path), outputs, input_topic)
