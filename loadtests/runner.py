"""``run_load``: publish a profile's transactions open-loop and match every score record back to its event.

Latency is measured from each event's *intended* send time (its due time in the profile) to the moment
its score record is consumed, so a generator that falls behind cannot hide the delay (coordinated
omission); the latency from the actual produce call is reported beside it. The scores and dead-letter
topics are read from the beginning and matched by tx_id (scores) and by the input's partition/offset
(dead letters): no end offsets are needed, which Tansu gets wrong.
"""

from __future__ import annotations

import asyncio
import random
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from itertools import chain, islice
from pathlib import Path
from typing import IO, Any

import orjson
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import RecordMetadata
from prometheus_client.parser import text_string_to_metric_families

from loadtests.histogram import REPORTED, LatencyHistogram
from loadtests.profiles import RateProfile
from stream_app.devtools.generator import GeneratorConfig, simulate
from stream_app.devtools.malformed import corrupt
from stream_app.settings import Settings

log = structlog.get_logger("loadtests")

SEND_GRACE_S = 5.0  # sending stops this long after the profile's end even if it fell behind
SAMPLE_EVERY_S = 1.0
PREGENERATE = 100_000  # events generated before the clock starts; later ones on the fly
LOST_SAMPLE = 20  # tx_ids of lost events kept in the report


@dataclass(frozen=True, slots=True)
class Topics:
    transactions: str = "transactions"
    scores: str = "scores"
    dlq: str = "transactions.dlq"

    @classmethod
    def from_settings(cls, s: Settings) -> Topics:
        return cls(s.transactions_topic, s.scores_topic, s.dlq_topic)


@dataclass(frozen=True, slots=True)
class LoadOptions:
    max_events: int | None = None  # stop sending after this many, whatever the profile says
    malformed_rate: float = 0.0  # share of events replaced by a malformed variant (they must be dead-lettered)
    seed: int = 42
    customers: int = 5000
    drain_timeout_s: float = 20.0  # after the last send, how long to wait for missing scores
    metrics_url: str | None = None  # a worker's /metrics, sampled for stream_app_consumer_lag_messages
    linger_ms: int = 2


@dataclass(frozen=True, slots=True)
class LagSample:
    t: float  # seconds since the start
    sent: int
    scored: int
    outstanding: int  # valid events sent and neither scored nor dead-lettered yet
    worker_lag: int | None  # the worker's own consumer lag on the transactions topic, when reachable


@dataclass
class LoadReport:
    run_id: str
    started_at: str
    bootstrap: str
    profile: dict[str, Any]
    options: dict[str, Any]
    planned: int = 0  # events the profile holds (bounded by max_events)
    sent: int = 0  # produce calls made
    send_errors: int = 0  # produce calls the broker did not acknowledge
    unsent: int = 0  # planned but not sent: stopped, or too far behind schedule
    valid_sent: int = 0
    malformed_sent: int = 0
    scored: int = 0  # valid events with a score record
    duplicate_scores: int = 0
    lost: int = 0  # valid, acknowledged, and neither scored nor dead-lettered within the drain timeout
    lost_sample: list[str] = field(default_factory=list)
    valid_dead_lettered: dict[str, int] = field(default_factory=dict)  # reason -> count
    malformed_dead_lettered: int = 0
    malformed_missing: int = 0
    send_seconds: float = 0.0
    generator_cpu_s: float = 0.0  # this process's CPU time: on a small machine it competes with the worker
    target_rate_eps: float = 0.0
    send_rate_eps: float = 0.0
    scored_rate_eps: float = 0.0
    latency_ms: dict[str, Any] = field(default_factory=dict)  # from the intended send time
    latency_from_send_ms: dict[str, Any] = field(default_factory=dict)  # from the actual produce call
    worker_latency_ms: dict[str, Any] = field(default_factory=dict)  # the score record's own timing.latency_ms
    send_delay_ms: dict[str, Any] = field(default_factory=dict)  # actual produce time - intended time
    percentile_curve: list[tuple[float, float]] = field(default_factory=list)
    per_second: list[dict[str, Any]] = field(default_factory=list)
    lag: list[LagSample] = field(default_factory=list)

    def to_json(self) -> str:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2).decode()

    def result_line(self) -> str:
        lat = self.latency_ms
        pct = " ".join(f"{name}_ms={_fmt(lat.get(name))}" for name, _ in REPORTED)
        return (f"RESULT sent={self.sent} scored={self.scored} lost={self.lost} eps={self.scored_rate_eps:.1f} "
                f"{pct} max_ms={_fmt(lat.get('max'))}")

    def summary(self) -> str:
        lat, raw, own, delay = self.latency_ms, self.latency_from_send_ms, self.worker_latency_ms, self.send_delay_ms
        dlq = ", ".join(f"{k}={v}" for k, v in sorted(self.valid_dead_lettered.items())) or "none"
        lags = [s.worker_lag for s in self.lag if s.worker_lag is not None]
        return "\n".join([
            f"load test {self.run_id}: {self.profile['name']} profile, {self.profile['duration_s']:g} s "
            f"against {self.bootstrap}",
            f"  sent          {self.sent} of {self.planned} planned ({self.malformed_sent} malformed on purpose), "
            f"{self.send_errors} send errors, {self.unsent} unsent",
            f"  rate          target {self.target_rate_eps:.1f}/s, sent {self.send_rate_eps:.1f}/s, "
            f"scored {self.scored_rate_eps:.1f}/s",
            f"  scored        {self.scored} of {self.valid_sent} valid; lost {self.lost}; "
            f"duplicate score records {self.duplicate_scores}; valid dead-lettered: {dlq}",
            f"  malformed     {self.malformed_dead_lettered} dead-lettered, {self.malformed_missing} missing",
            f"  latency       p50 {_fmt(lat.get('p50'))}  p90 {_fmt(lat.get('p90'))}  p99 {_fmt(lat.get('p99'))}  "
            f"p99.9 {_fmt(lat.get('p999'))}  max {_fmt(lat.get('max'))} ms (intended send -> score consumed)",
            f"  from produce  p50 {_fmt(raw.get('p50'))}  p99 {_fmt(raw.get('p99'))}  max {_fmt(raw.get('max'))} ms; "
            f"generator behind schedule p99 {_fmt(delay.get('p99'))}, max {_fmt(delay.get('max'))} ms",
            f"  in worker     p50 {_fmt(own.get('p50'))}  p99 {_fmt(own.get('p99'))}  max {_fmt(own.get('max'))} ms "
            f"(score record timing: input message timestamp -> scored)",
            f"  worker lag    max {max(lags) if lags else 'n/a'} messages (stream_app_consumer_lag_messages); "
            f"load generator CPU {self.generator_cpu_s:.1f} s",
            self.result_line(),
        ])


def _fmt(v: float | None) -> str:
    return "nan" if v is None else f"{v:.1f}"


class _Book:
    """Everything known about the events of one run, indexed by their sequence number."""

    def __init__(self, run_id: str, topic: str, ledger: IO[bytes] | None) -> None:
        self.run_id, self.topic, self.ledger = run_id, topic, ledger
        self.mono0, self.wall0 = 0.0, 0.0
        self.intended: list[float] = []  # seconds since start
        self.sent_at: list[float] = []
        self.tx_ids: list[str] = []
        self.reasons: list[str | None] = []  # expected dead-letter reason; None for a valid event
        self.by_tx: dict[str, int] = {}  # valid events only
        self.by_position: dict[tuple[int, int], int] = {}
        self.acked: list[bool] = []
        self.outcome: list[str | None] = []  # "scored" or "dlq:<reason>"
        self.early_dlq: dict[tuple[int, int], str] = {}  # dead letters read before their send was acked
        self.send_errors = 0
        self.scored = 0
        self.last_score_at = 0.0
        self.duplicates = 0
        self.valid_dlq: Counter[str] = Counter()
        self.malformed_dlq = 0
        self.latency = LatencyHistogram()
        self.from_send = LatencyHistogram()
        self.in_worker = LatencyHistogram()
        self.per_second: dict[int, LatencyHistogram] = {}

    def start(self) -> None:
        """Time zero of the schedule: every time below is in seconds from here (monotonic clock)."""
        self.mono0, self.wall0 = time.monotonic(), time.time()

    def now(self) -> float:
        return time.monotonic() - self.mono0

    def add(self, intended: float, tx_id: str, reason: str | None) -> int:
        seq = len(self.intended)
        self.intended.append(intended)
        self.sent_at.append(self.now())
        self.tx_ids.append(tx_id)
        self.reasons.append(reason)
        self.acked.append(False)
        self.outcome.append(None)
        if reason is None:
            self.by_tx[tx_id] = seq
        return seq

    def on_ack(self, seq: int, future: asyncio.Future[RecordMetadata]) -> None:
        line: dict[str, Any] = {"seq": seq, "tx_id": self.tx_ids[seq], "valid": self.reasons[seq] is None,
                                "expected_dlq_reason": self.reasons[seq],
                                "intended_ms": round((self.wall0 + self.intended[seq]) * 1000, 3),
                                "sent_ms": round((self.wall0 + self.sent_at[seq]) * 1000, 3)}
        if future.cancelled() or future.exception() is not None:
            self.send_errors += 1
            error = "cancelled" if future.cancelled() else repr(future.exception())
            if self.send_errors == 1:
                log.warning("loadtest.send_failed", seq=seq, error=error)
            line["error"] = error
        else:
            meta = future.result()
            self.acked[seq] = True
            position = (meta.partition, meta.offset)
            self.by_position[position] = seq
            line.update(topic=meta.topic, partition=meta.partition, offset=meta.offset)
            if position in self.early_dlq:
                self._dead_lettered(seq, self.early_dlq.pop(position))
        if self.ledger is not None:
            self.ledger.write(orjson.dumps(line) + b"\n")

    def on_score(self, record: dict[str, Any], now: float) -> None:
        seq = self.by_tx.get(record["tx_id"])
        if seq is None:  # another run's event
            return
        if self.outcome[seq] == "scored":
            self.duplicates += 1
            return
        self.outcome[seq] = "scored"
        self.scored += 1
        self.last_score_at = now
        ms = (now - self.intended[seq]) * 1000
        self.latency.record(ms)
        self.from_send.record((now - self.sent_at[seq]) * 1000)
        self.in_worker.record(record["timing"]["latency_ms"])
        self.per_second.setdefault(int(self.intended[seq]), LatencyHistogram()).record(ms)

    def on_dead_letter(self, record: dict[str, Any]) -> None:
        source = record.get("source") or {}
        if source.get("topic") != self.topic:
            return
        position = (source["partition"], source["offset"])
        seq = self.by_position.get(position)
        if seq is None:
            self.early_dlq[position] = record["reason"]
        else:
            self._dead_lettered(seq, record["reason"])

    def _dead_lettered(self, seq: int, reason: str) -> None:
        if self.outcome[seq] is not None:
            return
        self.outcome[seq] = f"dlq:{reason}"
        if self.reasons[seq] is None:
            self.valid_dlq[reason] += 1
        else:
            self.malformed_dlq += 1

    @property
    def valid_sent(self) -> int:
        return len(self.by_tx)

    def outstanding(self) -> int:
        return self.valid_sent - self.scored - sum(self.valid_dlq.values())

    def settled(self) -> bool:
        """Every acknowledged event has its expected outcome (a score, or a dead letter if malformed)."""
        valid_acked = sum(1 for s in self.by_tx.values() if self.acked[s])
        malformed_acked = sum(self.acked) - valid_acked
        return self.scored + sum(self.valid_dlq.values()) >= valid_acked and self.malformed_dlq >= malformed_acked


async def run_load(profile: RateProfile, bootstrap: str, topics: Topics, *, ledger: Path | None = None,
                   options: LoadOptions = LoadOptions(), stop: asyncio.Event | None = None,
                   on_progress: Callable[[LagSample], None] | None = None) -> LoadReport:
    """Send ``profile``'s events to ``topics.transactions`` and measure them until scored or the drain
    timeout passes. ``ledger``: a JSONL file with one line per event sent (seq, tx_id, valid, expected
    dead-letter reason, intended/sent wall ms, partition/offset or error), for checkers that must account
    for every event. ``stop`` ends sending early; ``on_progress`` gets a sample every second."""
    stop = stop or asyncio.Event()
    run_id = uuid.uuid4().hex[:8]
    planned = profile.expected_events if options.max_events is None else min(profile.expected_events,
                                                                              options.max_events)
    # Everything slow happens before the clock starts, so the first events are not late by construction:
    # client start-up, and generating the transactions (the simulator builds a whole day at a time).
    events = _events(options, run_id, int(time.time() * 1000))
    events = chain(await asyncio.to_thread(lambda: list(islice(events, min(planned, PREGENERATE)))), events)
    ledger_file = ledger.open("wb") if ledger is not None else None
    book = _Book(run_id, topics.transactions, ledger_file)
    consumer = await _start_consumer(bootstrap, topics)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=options.linger_ms, acks="all")
    await producer.start()
    book.start()
    cpu0 = time.process_time()
    report = LoadReport(run_id=run_id, started_at=datetime.fromtimestamp(book.wall0, UTC).isoformat(),
                        bootstrap=bootstrap, profile=profile.describe(), options=asdict(options), planned=planned)
    lag: list[LagSample] = []
    reading, sampling = asyncio.Event(), asyncio.Event()
    reader = asyncio.create_task(_read(consumer, topics, book, reading))
    sampler = asyncio.create_task(_sample(book, lag, options.metrics_url, topics.transactions, on_progress,
                                          sampling))
    log.info("loadtest.started", run_id=run_id, bootstrap=bootstrap, profile=profile.name,
             duration_s=profile.duration_s, planned=planned)
    try:
        try:
            await _send(profile, planned, producer, topics.transactions, events, book, stop)
        finally:
            await producer.stop()  # flushes what is still buffered
        send_end = book.now()
        deadline = time.monotonic() + options.drain_timeout_s
        while time.monotonic() < deadline and not book.settled():
            await asyncio.sleep(0.05)
    finally:
        reading.set()
        sampling.set()
        await asyncio.gather(reader, sampler)
        if ledger_file is not None:
            ledger_file.close()
    _fill(report, profile, book, send_end, lag)
    report.generator_cpu_s = round(time.process_time() - cpu0, 2)
    log.info("loadtest.finished", run_id=run_id, sent=report.sent, scored=report.scored, lost=report.lost)
    return report


_Event = tuple[str, bytes, bytes, str | None]  # tx_id, key, value, expected dead-letter reason (None: valid)


def _events(options: LoadOptions, run_id: str, start_ms: int) -> Iterator[_Event]:
    """Synthetic transactions with run-unique tx_ids (a long-lived worker would skip repeated ids as
    duplicates) and event times from now on (older ones could be refused as late); some malformed."""
    rng = random.Random(options.seed ^ 0x10AD)
    source = simulate(GeneratorConfig(seed=options.seed, n_customers=options.customers, start_ms=start_ms))
    for seq, item in enumerate(source):
        tx = replace(item.tx, tx_id=f"lt-{run_id}-{seq:09d}")
        if options.malformed_rate and rng.random() < options.malformed_rate:
            value, reason = corrupt(tx, rng)
            yield tx.tx_id, tx.card_id.encode(), value, reason
        else:
            yield tx.tx_id, tx.card_id.encode(), tx.to_bytes(), None


async def _start_consumer(bootstrap: str, topics: Topics) -> AIOKafkaConsumer:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=10)
    await consumer.start()
    try:
        await consumer.topics()  # a metadata round trip, so that the partitions are known
        tps = []
        for topic in (topics.scores, topics.dlq):
            partitions = consumer.partitions_for_topic(topic)
            if not partitions:
                raise ValueError(f"topic {topic!r} does not exist on {bootstrap}")
            tps += [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        return consumer
    except BaseException:
        await consumer.stop()
        raise


async def _read(consumer: AIOKafkaConsumer, topics: Topics, book: _Book, done: asyncio.Event) -> None:
    try:
        while not done.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=10_000)
            now = book.now()
            for tp, messages in batches.items():
                for m in messages:
                    record = orjson.loads(m.value)
                    if tp.topic == topics.scores:
                        book.on_score(record, now)
                    else:
                        book.on_dead_letter(record)
    finally:
        await consumer.stop()


async def _send(profile: RateProfile, planned: int, producer: AIOKafkaProducer, topic: str,
                events: Iterator[_Event], book: _Book, stop: asyncio.Event) -> None:
    """Send every event at its due time, never waiting for answers, until ``planned`` are sent, ``stop``
    is set or the run is more than SEND_GRACE_S behind the profile's end."""
    give_up = profile.duration_s + SEND_GRACE_S
    for seq, (due, (tx_id, key, value, reason)) in enumerate(zip(profile.offsets(), events, strict=False)):
        if seq >= planned or stop.is_set():
            break
        now = book.now()
        if now > give_up:
            log.warning("loadtest.behind_schedule", sent=seq, planned=planned)
            break
        if due > now:
            await asyncio.sleep(due - now)
        elif seq % 100 == 0:
            await asyncio.sleep(0)  # far behind: still let the reader and the acks run
        book.add(due, tx_id, reason)
        future = await producer.send(topic, value, key=key)
        future.add_done_callback(partial(book.on_ack, seq))


async def _sample(book: _Book, out: list[LagSample], metrics_url: str | None,
                  topic: str, on_progress: Callable[[LagSample], None] | None, done: asyncio.Event) -> None:
    while True:
        worker_lag = await asyncio.to_thread(worker_lag_of, metrics_url, topic) if metrics_url else None
        sample = LagSample(round(book.now(), 3), len(book.intended), book.scored,
                           book.outstanding(), worker_lag)
        out.append(sample)
        if on_progress is not None:
            on_progress(sample)
        try:
            await asyncio.wait_for(done.wait(), SAMPLE_EVERY_S)
            return
        except TimeoutError:
            pass


def worker_lag_of(metrics_url: str, topic: str) -> int | None:
    """Sum of the worker's ``stream_app_consumer_lag_messages`` over ``topic``'s partitions; None when the
    page cannot be read (the run goes on without it)."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=0.5) as response:
            text = response.read().decode()
    except OSError:
        return None
    total = None
    for family in text_string_to_metric_families(text):
        if family.name == "stream_app_consumer_lag_messages":
            for sample in family.samples:
                if sample.labels.get("topic") == topic:
                    total = (total or 0) + int(sample.value)
    return total


def _fill(report: LoadReport, profile: RateProfile, book: _Book, send_end: float, lag: list[LagSample]) -> None:
    sent = len(book.intended)
    lost = [book.tx_ids[s] for s in book.by_tx.values() if book.acked[s] and book.outcome[s] is None]
    malformed = [s for s, r in enumerate(book.reasons) if r is not None]
    delay = LatencyHistogram()
    for intended, sent_at in zip(book.intended, book.sent_at, strict=True):
        delay.record((sent_at - intended) * 1000)
    sent_per_second = Counter(int(t) for t in book.intended)
    report.sent, report.unsent = sent, max(0, report.planned - sent)
    report.send_errors = book.send_errors
    report.valid_sent, report.malformed_sent = book.valid_sent, len(malformed)
    report.scored, report.duplicate_scores = book.scored, book.duplicates
    report.lost, report.lost_sample = len(lost), lost[:LOST_SAMPLE]
    report.valid_dead_lettered = dict(book.valid_dlq)
    report.malformed_dead_lettered = book.malformed_dlq
    report.malformed_missing = sum(1 for s in malformed if book.acked[s] and book.outcome[s] is None)
    report.send_seconds = round(send_end, 3)
    report.target_rate_eps = round(profile.expected_events / profile.duration_s, 1)
    report.send_rate_eps = round(sent / send_end, 1) if send_end > 0 else 0.0
    report.scored_rate_eps = round(book.scored / book.last_score_at, 1) if book.scored else 0.0
    report.latency_ms = book.latency.summary()
    report.latency_from_send_ms = book.from_send.summary()
    report.worker_latency_ms = book.in_worker.summary()
    report.send_delay_ms = delay.summary()
    report.percentile_curve = book.latency.curve()
    report.per_second = [
        {"t": sec, "target_rate": round(profile.rate_at(sec + 0.5), 1), "sent": sent_per_second[sec],
         **{k: v for k, v in book.per_second[sec].summary().items() if k in ("count", "p50", "p99", "max")}}
        for sec in sorted(book.per_second)]
    report.lag = lag
