"""Chaos run: two workers in one consumer group under open-loop load, ``kill -9`` one mid-stream.

    python -m loadtests.chaos --rate 400 --seconds 40 --restart [--partitioner murmur2|crc32|fnv1a|mixed]

Starts the embedded broker (or uses ``--bootstrap``, loopback only), creates the run's own topics,
starts two ``stream-app worker`` processes, publishes synthetic payments (with malformed ones) while
writing a ledger of every event the broker acknowledged, kills one worker with SIGKILL at
``--kill-at`` of the run, optionally restarts it ``--restart-after`` seconds later, then drains and runs
the checker (``loadtests/ledger.py``) over ``scores``, ``fraud-alerts`` and the DLQ.

Takeover is measured from the outputs: for every input partition, the time from the kill to the first
score record (``timing.scored_at_ms``) of an event of that partition scored after it; the largest is the
takeover (the killed worker's partitions wait for the session timeout, the rebalance and table recovery).

Card state is checked too: every score record's features are compared with a reference that runs the
same ``featurize`` over the ledger's valid events in send order in one process, without any kill. A state
lost in a takeover or a restart shows up as ``feature_mismatches``. And each card's last stored state (the
cards table's changelog) must hold exactly the events that reference folds into it (``state_mismatches``:
its tx_id digests and per-day counts, which do not depend on the order of folding).

``--partitioner`` picks how the load's producers partition the card-keyed events: ``murmur2`` (Java,
aiokafka, kafkajs: the card's own partition), ``crc32`` (librdkafka's default ``consistent_random``:
confluent-kafka, node-rdkafka), ``fnv1a`` (sarama's default), or ``mixed`` (each event's producer picks
one of the three at random, seeded). Kafka orders a card's events only within a partition: mixed producers
split them over several, and the worker folds them in arrival order (re-keyed ones a hop later), so with
``mixed`` features may differ from the send-order reference for events of a card that arrive close
together; that run is judged on ``state_mismatches`` (and lost/duplicates), its ``feature_mismatches`` are
reported only.

The last line is machine-readable:
``RESULT sent=… scored=… dlq=… lost=… duplicate_alerts=… takeover_s=… duplicate_scores=… feature_mismatches=…
state_mismatches=… partitioner=…`` (one line). Exit status 0 when nothing was lost, no alert or score was
duplicated, card states and (unless ``mixed``) features match the reference and a takeover was measured, else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import signal
import sys
import tempfile
import time
import urllib.request
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from loadtests.ledger import (
    Check,
    LedgerEntry,
    LedgerWriter,
    OutputRecord,
    Outputs,
    check,
    read_all,
    read_ledger,
    read_outputs,
)
from stream_app.devtools.broker import EmbeddedBroker
from stream_app.devtools.generator import GeneratorConfig, simulate
from stream_app.devtools.malformed import corrupt
from stream_app.devtools.worker_process import WorkerProcess, topic_env
from stream_app.domain.events import Transaction
from stream_app.domain.features import FEATURE_NAMES, CardState, featurize
from stream_app.domain.ingress import card_partition
from stream_app.settings import Settings
from stream_app.worker.delivery import decode_card


def _now_ms() -> int:
    return int(time.time() * 1000)


def _fnv1a_partition(key: bytes, partitions: int) -> int:
    """sarama's default hash partitioner: int32(FNV-1a 32 of the key) % n, negated when negative."""
    h = 0x811C9DC5
    for byte in key:
        h = ((h ^ byte) * 0x01000193) & 0xFFFFFFFF
    return abs(h - (1 << 32) if h >= 1 << 31 else h) % partitions


#: How producers of other clients partition a non-empty key over ``n`` partitions.
PARTITIONERS: dict[str, Callable[[bytes, int], int]] = {
    "murmur2": card_partition,  # Java's default (toPositive(murmur2) % n), aiokafka, kafkajs
    "crc32": lambda key, n: zlib.crc32(key) % n,  # librdkafka consistent_random: rd_crc32(key) % partition_cnt
    "fnv1a": _fnv1a_partition,
}


@dataclass(frozen=True)
class ChaosOptions:
    rate: float = 400.0  # events per second offered (open loop)
    seconds: float = 40.0  # of load
    kill_at: float = 0.3  # share of the load duration at which one worker gets SIGKILL
    restart: bool = False  # start the killed worker again (same data dir) after restart_after_s
    restart_after_s: float = 15.0
    malformed_rate: float = 0.02
    seed: int = 7
    customers: int = 3000
    partitions: int = 4
    session_timeout_s: float = 6.0
    drain_timeout_s: float = 90.0
    workdir: Path | None = None
    bootstrap: str | None = None  # None: start the embedded broker
    partitioner: str = "murmur2"  # a PARTITIONERS name, or "mixed": each event's producer picks one
    worker_env: tuple[tuple[str, str], ...] = ()  # extra environment for the workers


@dataclass
class ChaosReport:
    check: Check
    takeover_s: float  # inf when a partition never produced again
    takeover_by_partition: dict[int, float]
    feature_mismatches: int
    state_mismatches: int
    entity_mismatches: int  # (worker, merchant) replicas whose count differs from the events at the merchant
    partitioner: str
    restarted_scored: int | None  # events scored by the restarted worker (None: no restart)
    kill_ms: int
    ledger_path: Path
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        features_ok = self.feature_mismatches == 0 or self.partitioner == "mixed"  # arrival order: see above
        return (self.check.ok and self.check.duplicate_scores == 0 and math.isfinite(self.takeover_s) and features_ok
                and self.state_mismatches == 0 and self.entity_mismatches == 0
                and (self.restarted_scored is None or self.restarted_scored > 0))

    def result_line(self) -> str:
        c = self.check
        return (f"RESULT sent={c.sent} scored={c.scored} dlq={c.dlq} lost={c.lost} "
                f"duplicate_alerts={c.duplicate_alerts} takeover_s={self.takeover_s:.1f} "
                f"duplicate_scores={c.duplicate_scores} feature_mismatches={self.feature_mismatches} "
                f"state_mismatches={self.state_mismatches} entity_mismatches={self.entity_mismatches} "
                f"partitioner={self.partitioner}")


class Load:
    """Open-loop sender: the schedule follows the clock; every event the broker acknowledged is written
    to the ledger with its partition and offset, and valid ones are kept for the feature reference."""

    def __init__(self, bootstrap: str, topic: str, ledger: LedgerWriter, options: ChaosOptions) -> None:
        self.bootstrap, self.topic, self.ledger, self.o = bootstrap, topic, ledger, options
        self.valid: list[Transaction] = []  # in send order
        self.sent = 0
        self.failed = 0
        self.source = simulate(GeneratorConfig(seed=options.seed, n_customers=options.customers, fraud_rate=0.02))
        self.rng = random.Random(options.seed ^ 0xC4A05)
        self.pick = random.Random(options.seed ^ 0x9A27)  # its own stream: the same events whatever the partitioner

    async def run(self, stop: asyncio.Event) -> None:
        """``o.seconds`` of load; a second call continues the same stream (a later phase of a test)."""
        o, rng, source = self.o, self.rng, self.source
        names = sorted(PARTITIONERS) if o.partitioner == "mixed" else [o.partitioner]
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5, acks="all")
        await producer.start()
        in_flight: list[asyncio.Future[Any]] = []
        start = time.monotonic()
        due_total = 0
        try:
            while not stop.is_set():
                elapsed = time.monotonic() - start
                if elapsed >= o.seconds:
                    break
                due = int(elapsed * o.rate) + 1
                while due_total < due:
                    due_total += 1
                    tx = next(source).tx
                    if rng.random() < o.malformed_rate:
                        value, _reason = corrupt(tx, rng)
                        valid = False
                    else:
                        value, valid = tx.to_bytes(), True
                    key = tx.card_id.encode()
                    partition = PARTITIONERS[self.pick.choice(names)](key, o.partitions)
                    fut = await producer.send(self.topic, value, key=key, partition=partition)
                    if valid:
                        self.valid.append(tx)
                    sent_ms = _now_ms()
                    fut.add_done_callback(lambda f, tx_id=tx.tx_id, ok=valid, ms=sent_ms: self._done(f, tx_id, ok, ms))
                    in_flight.append(fut)
                if len(in_flight) > 5000:
                    await asyncio.gather(*in_flight, return_exceptions=True)
                    in_flight.clear()
                await asyncio.sleep(0.005)
            await asyncio.gather(*in_flight, return_exceptions=True)
        finally:
            await producer.stop()

    def _done(self, fut: asyncio.Future[Any], tx_id: str, valid: bool, sent_ms: int) -> None:
        if fut.cancelled() or fut.exception() is not None:
            self.failed += 1  # never acknowledged: not in the ledger (the checker cannot demand it)
            return
        meta = fut.result()
        self.sent += 1
        self.ledger.write(LedgerEntry(tx_id, valid, sent_ms, meta.partition, meta.offset))


def takeover(outputs: Outputs, input_topics: set[str], kill_ms: int) -> dict[int, float]:
    """Per input partition number: seconds from the kill to the first score of one of its events scored after
    it (``input_topics``: the input and re-key topics, whose partition n is owned by one worker)."""
    first_after: dict[int, int] = {}
    seen: set[int] = set()
    for r in outputs.scores:
        src = r.value.get("source") or {}
        if src.get("topic") not in input_topics:
            continue
        p = int(src["partition"])
        seen.add(p)
        at = int((r.value.get("timing") or {}).get("scored_at_ms", 0))
        if at > kill_ms and (p not in first_after or at < first_after[p]):
            first_after[p] = at
    return {p: (first_after[p] - kill_ms) / 1000 if p in first_after else math.inf for p in sorted(seen)}


def unique(valid: Sequence[Transaction]) -> list[Transaction]:
    """The events once each (a tx_id sent twice is scored once)."""
    return list({tx.tx_id: tx for tx in valid}.values())


def reference(valid: Sequence[Transaction], horizon_ms: int) -> tuple[dict[str, list[float]], dict[str, CardState]]:
    """One uninterrupted pass of ``featurize`` over the events in send order: each event's features, and
    each card's state at the end."""
    states: dict[str, CardState] = {}
    expected: dict[str, list[float]] = {}
    for tx in valid:
        try:
            expected[tx.tx_id] = featurize(states, tx, horizon_ms)
        except Exception:  # a duplicate or late event in the generated stream: not scored
            continue
    return expected, states


def feature_mismatches(valid: Sequence[Transaction], outputs: Outputs, horizon_ms: int) -> tuple[int, list[str]]:
    """Score records whose features differ from one uninterrupted pass of ``featurize`` over the events."""
    expected, _ = reference(valid, horizon_ms)
    bad: list[str] = []
    for r in outputs.scores:
        want = expected.get(str(r.value.get("tx_id")))
        got = r.value.get("features")
        if want is None or got is None:
            continue
        values = [got.get(n) for n in FEATURE_NAMES]
        pairs = zip(values, want, strict=True)
        if any(g is None or not math.isclose(g, w, rel_tol=1e-9, abs_tol=1e-9) for g, w in pairs):
            bad.append(str(r.value["tx_id"]))
    return len(bad), bad


def state_mismatches(valid: Sequence[Transaction], changelog: Sequence[OutputRecord],
                     horizon_ms: int) -> tuple[int, list[str]]:
    """Cards whose last record in the cards table's changelog (offset order) lacks one of the events one
    uninterrupted pass folds into the card, or has another: compared on the tx_id digests and the per-day
    counts, which do not depend on the order the events were folded in."""
    _, states = reference(valid, horizon_ms)
    stored = {r.key: decode_card(r.raw)[0].as_dict()
              for r in sorted(changelog, key=lambda r: (r.partition, r.offset)) if r.key is not None and r.raw}

    def folded(state: dict[str, Any]) -> tuple[list[int], dict[int, int]]:
        return sorted(h for h, _ in state.get("seen", [])), {int(d[0]): int(d[1]) for d in state.get("days", [])}

    bad = [card for card, state in states.items()
           if card.encode() not in stored or folded(stored[card.encode()]) != folded(state.as_dict())]
    return len(bad), bad


def _metric(port: int, name: str) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def _say(msg: str) -> None:
    print(msg, flush=True)


async def wait_scored(bootstrap: str, s: Settings, valid_ids: set[str], timeout_s: float) -> Outputs:
    """Read the outputs until every valid event has a score record (or the timeout): the drain."""
    deadline = time.monotonic() + timeout_s
    while True:
        outputs = await read_outputs(bootstrap, s.scores_topic, s.alerts_topic, s.dlq_topic, idle_s=1.0)
        missing = valid_ids - {str(r.value.get("tx_id")) for r in outputs.scores}
        if not missing or time.monotonic() >= deadline:
            return outputs
        _say(f"draining: {len(missing)} valid events not scored yet")
        await asyncio.sleep(2.0)


def entity_mismatches(scored: Sequence[Transaction], ports: Sequence[int], timeout_s: float = 30.0
                      ) -> tuple[int, list[str]]:
    """Every worker's entity replica against the events: once the stream is drained, a probe at each merchant
    (``POST /score``, read only) must see exactly the transactions scored there — none lost, none counted
    twice, whichever worker scored them and whatever was killed. Merchant aggregates are built across
    partitions, so they are checked at quiescence (the staleness while running is the replica's lag)."""
    counts = Counter(tx.merchant_id for tx in scored)
    after = max(tx.ts_ms for tx in scored) + 60_000
    probes = [{"tx_id": f"probe-{i}", "card_id": f"chaos_probe_{i}", "merchant_id": m, "amount": 1.0,
               "currency": "EUR", "timestamp": after, "country": "FR", "channel": "pos", "mcc": "5411"}
              for i, m in enumerate(sorted(counts))]
    bad: list[str] = []
    for port in ports:
        deadline = time.monotonic() + timeout_s
        while True:
            wrong = []
            for start in range(0, len(probes), 1000):
                chunk = probes[start:start + 1000]
                request = urllib.request.Request(f"http://127.0.0.1:{port}/score", data=orjson.dumps(chunk),
                                                 method="POST")
                with urllib.request.urlopen(request, timeout=30) as r:
                    answers = orjson.loads(r.read())["results"]
                for probe, answer in zip(chunk, answers, strict=True):
                    merchant, held = probe["merchant_id"], answer["features"]["merchant_n_total"]
                    if held != counts[merchant]:
                        wrong.append(f"{port}:{merchant}={held:.0f}/{counts[merchant]}")
            if not wrong or time.monotonic() > deadline:
                break
            time.sleep(1.0)  # the replica may still be reading the scores topic
        bad += wrong
    return len(bad), bad


def run_chaos(o: ChaosOptions) -> ChaosReport:
    from stream_app.kafka.topics import create_topics

    workdir = o.workdir or Path(tempfile.mkdtemp(prefix="chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    broker = None
    bootstrap = o.bootstrap
    if bootstrap is None:
        broker = EmbeddedBroker(log_path=workdir / "broker.log").start()
        bootstrap = broker.bootstrap
    host = bootstrap.split(",")[0].rsplit(":", 1)[0]
    if host not in {"127.0.0.1", "localhost", "::1"}:
        raise SystemExit(f"chaos runs on loopback only, not {bootstrap}")
    prefix = f"chaos-{uuid.uuid4().hex[:8]}"
    env = {**topic_env(prefix, o.partitions), "STREAM_APP_SESSION_TIMEOUT_S": str(o.session_timeout_s),
           **dict(o.worker_env)}
    s = Settings.from_env({**env, "KAFKA_BOOTSTRAP_SERVERS": bootstrap})
    workers: list[WorkerProcess] = []
    try:
        create_topics(s)
        _say(f"broker {bootstrap}; topics {prefix}.*; workdir {workdir}")
        workers = [WorkerProcess(bootstrap, workdir / name, env) for name in ("worker-a", "worker-b")]
        for w in workers:
            w.start()
        for w in workers:
            w.wait_ready()
        _say(f"two workers ready (web ports {workers[0].web_port}, {workers[1].web_port}); "
             f"{o.rate:.0f} events/s for {o.seconds:.0f} s partitioned by {o.partitioner}, "
             f"kill -9 at {o.kill_at * o.seconds:.0f} s")
        ledger_path = workdir / "ledger.jsonl"
        ledger_path.unlink(missing_ok=True)
        ledger = LedgerWriter(ledger_path)
        load = Load(bootstrap, s.transactions_topic, ledger, o)
        victim = workers[1]
        kill_ms, restarted_scored = asyncio.run(_drive(load, victim, o))
        ledger.close()
        _say(f"load done: {load.sent} events acknowledged by the broker ({load.failed} failed sends)")
        entries = read_ledger(ledger_path)
        valid_ids = {e.tx_id for e in entries if e.valid}
        outputs = asyncio.run(wait_scored(bootstrap, s, valid_ids, o.drain_timeout_s))
        if o.restart:
            restarted_scored = _metric(victim.web_port, "stream_app_events_scored_total")
        result = check(entries, outputs, s.transactions_topic)
        by_partition = takeover(outputs, {s.transactions_topic, s.rekeyed_topic}, kill_ms)
        mismatches, bad = feature_mismatches(load.valid, outputs, s.dedup_horizon_s * 1000)
        changelog = f"{s.app_id}-cards-changelog"  # faust's name for the cards table's changelog
        states_bad, bad_cards = state_mismatches(
            load.valid, asyncio.run(read_all(bootstrap, [changelog], idle_s=1.0))[changelog], s.dedup_horizon_s * 1000)
        scored_ids = {str(r.value.get("tx_id")) for r in outputs.scores}
        entities_bad, bad_entities = entity_mismatches([t for t in unique(load.valid) if t.tx_id in scored_ids],
                                                       [w.web_port for w in workers])
        report = ChaosReport(result, max(by_partition.values(), default=math.inf), by_partition, mismatches,
                             states_bad, entities_bad, o.partitioner,
                             None if restarted_scored is None else int(restarted_scored),
                             kill_ms, ledger_path)
        if bad:
            report.notes.append(f"feature mismatches for: {', '.join(bad[:10])}")
        if bad_entities:
            report.notes.append(f"entity replicas unlike the events (port:merchant=replica/events): "
                                f"{', '.join(bad_entities[:10])}")
        if bad_cards:
            report.notes.append(f"card states unlike the reference: {', '.join(bad_cards[:10])}")
        lost = set(result.lost_valid) | set(result.lost_malformed)
        if lost:
            where = Counter(e.partition for e in entries if e.tx_id in lost)
            report.notes.append(f"lost events by input partition: {dict(sorted(where.items()))}")
        return report
    finally:
        for w in workers:
            w.stop()
        if broker is not None:
            broker.stop()


async def _drive(load: Load, victim: WorkerProcess, o: ChaosOptions) -> tuple[int, float | None]:
    stop = asyncio.Event()
    sender = asyncio.create_task(load.run(stop))
    await asyncio.sleep(o.kill_at * o.seconds)
    victim.stop(signal.SIGKILL)
    kill_ms = _now_ms()
    _say(f"kill -9 worker-b at {kill_ms} ({load.sent} events acknowledged so far)")
    restarted: float | None = None
    if o.restart:
        await asyncio.sleep(o.restart_after_s)
        readies = victim.log().count('"worker.ready"')
        victim.start()
        t0 = time.monotonic()
        await asyncio.to_thread(victim.wait_ready, after=readies)
        _say(f"worker-b restarted, ready after {time.monotonic() - t0:.1f} s (tables recovered from changelogs)")
        restarted = 0.0
    await sender
    return kill_ms, restarted


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtests.chaos", description=__doc__.split("\n\n")[0])
    d = ChaosOptions()
    p.add_argument("--rate", type=float, default=d.rate, help="events per second (open loop)")
    p.add_argument("--seconds", type=float, default=d.seconds, help="duration of the load")
    p.add_argument("--kill-at", type=float, default=d.kill_at, help="share of the duration at which to kill -9")
    p.add_argument("--restart", action="store_true", help="restart the killed worker and check it rejoins")
    p.add_argument("--restart-after", type=float, default=d.restart_after_s, help="seconds after the kill")
    p.add_argument("--malformed-rate", type=float, default=d.malformed_rate)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--partitions", type=int, default=d.partitions)
    p.add_argument("--partitioner", choices=[*sorted(PARTITIONERS), "mixed"], default=d.partitioner,
                   help="how the load's producers partition card keys (mixed: each event picks one)")
    p.add_argument("--session-timeout", type=float, default=d.session_timeout_s, help="seconds (workers')")
    p.add_argument("--bootstrap", default=None, help="a loopback broker to use instead of starting Tansu")
    p.add_argument("--workdir", type=Path, default=None, help="worker data, logs and the ledger (default: a temp dir)")
    a = p.parse_args(argv)
    o = ChaosOptions(rate=a.rate, seconds=a.seconds, kill_at=a.kill_at, restart=a.restart,
                     restart_after_s=a.restart_after, malformed_rate=a.malformed_rate, seed=a.seed,
                     partitions=a.partitions, session_timeout_s=a.session_timeout, bootstrap=a.bootstrap,
                     workdir=a.workdir, partitioner=a.partitioner)
    report = run_chaos(o)
    for line in report.check.lines():
        _say(line)
    takeovers = report.takeover_by_partition.items()
    _say("takeover by input partition (s): " + ", ".join(f"p{p}={t:.1f}" for p, t in takeovers))
    if report.restarted_scored is not None:
        _say(f"restarted worker scored {report.restarted_scored} events after rejoining")
    for note in report.notes:
        _say(note)
    _say(f"ledger: {report.ledger_path}")
    _say(report.result_line())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
