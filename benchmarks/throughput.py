"""Throughput and latency of stream_app side by side with three baselines, on one broker, same events.

  (a) passthrough  bare aiokafka consume -> produce (the ceiling for one Python process)
  (b) naive        aiokafka + json + per-card dict state + River + one onnxruntime call per event
  (c) faust        a plain Faust agent forwarding each event with `topic.send` (the framework's floor)
  (d) stream_app   a real `stream-app worker` process: all features, both models, DLQ, alert dedup
  (e) stream_app_x2 `stream-app worker --processes 2`: two such processes in one consumer group
  (f) runtime_floor stream_app's runtime with a free core: a Faust app on stream_app's transport driver, its
                 `micro_batches`, partition-batch sends and batched acks, forwarding each event unscored

Each contender runs as its own process against the embedded broker (or --bootstrap, loopback).
Phase 1, throughput: N events are pre-loaded into the contender's input topic; events/s is taken
from the output records' timestamps (first to last), so process start-up is not counted.
Phase 2, latency: the same continuation of the stream is published open-loop at a fixed rate
(5k/s, or half of stream_app's phase-1 maximum if lower; ``--rate``: this rate, so that runs of two checkouts
are compared at the same load) and each event's latency is measured from
its scheduled send time to its output record being consumed here; "prod" columns: from the scheduled send
to the output record's timestamp (when the contender's producer took it: what is left is the wait for the
broker to take and serve it).
CPU µs per event: CPU time of the contender's processes (children included) from its first output to its
last of phase 1, per event (the broker's CPU is not in it); the second CPU column is the same over phase 2
(events at the fixed rate: smaller micro-batches, and cards with the history of phase 1).
``--runs N`` repeats the contenders N times, interleaved (a, d, f, a, d, f, ...), prints each run's table, then
the medians of every figure; the ratios in the last line are then the medians of each run's ratios (contenders
of one run share the machine's load of that minute).
Run: python benchmarks/throughput.py [--n 50000] [--latency-seconds 10] [--only a,b,c,d,e,f] [--runs 3]
The last line is machine-readable (RESULT ...); --json writes all figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, cast

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream_app.devtools.broker import EmbeddedBroker, free_port, port_is_free
from stream_app.devtools.children import die_with_parent
from stream_app.devtools.generator import GeneratorConfig, simulate
from stream_app.devtools.worker_process import WorkerProcess, topic_env
from stream_app.kafka.topics import TopicSpec, create_topics, ensure_topics
from stream_app.settings import Settings

PARTITIONS = 4
CONTENDERS = {"a": "passthrough", "b": "naive", "c": "faust", "d": "stream_app", "e": "stream_app_x2",
              "f": "runtime_floor"}
WORKERS = {"stream_app": 1, "stream_app_x2": 2}  # the contenders that are `stream-app worker`, by processes
ACKS = "all"  # every contender waits for the broker, as stream_app does


# -- contenders (each runs in its own process) -----------------------------------------------------
async def run_passthrough(bootstrap: str, src: str, dst: str) -> None:
    await _consume_produce(bootstrap, src, dst, lambda key, value: (key, value))


async def run_naive(bootstrap: str, src: str, dst: str) -> None:
    """What a user would write first: json, a dict per card, River and ONNX one event at a time."""
    import numpy as np
    import onnxruntime as ort
    from river import linear_model, preprocessing

    from stream_app.models.onnx_model import packaged_model_path

    session = ort.InferenceSession(str(packaged_model_path()), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    width = session.get_inputs()[0].shape[1]
    river = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    cards: dict[str, dict[str, float]] = {}

    def score(key: bytes, value: bytes) -> tuple[bytes, bytes]:
        tx = json.loads(value)
        ts = datetime.fromisoformat(tx["timestamp"]).timestamp()
        card = cards.setdefault(tx["card_id"], {"n": 0.0, "sum": 0.0, "last": ts})
        x = {"amount": float(tx["amount"]), "n": card["n"], "mean": card["sum"] / max(card["n"], 1.0),
             "gap": ts - card["last"]}
        card["n"] += 1
        card["sum"] += x["amount"]
        card["last"] = ts
        p_river = river.predict_proba_one(x).get(True, 0.0)
        row = np.zeros((1, width), dtype=np.float32)
        row[0, :4] = list(x.values())
        p_onnx = float(session.run(None, {input_name: row})[1][0][1])
        out = {"tx_id": tx["tx_id"], "risk": 0.5 * (p_river + p_onnx)}
        return key, json.dumps(out).encode()

    await _consume_produce(bootstrap, src, dst, score)


async def _consume_produce(bootstrap: str, src: str, dst: str, fn: Any) -> None:
    consumer = AIOKafkaConsumer(src, bootstrap_servers=bootstrap, group_id=f"bench-{src}",
                                auto_offset_reset="earliest", enable_auto_commit=False, fetch_max_wait_ms=10,
                                session_timeout_ms=6000, heartbeat_interval_ms=1000)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=ACKS, linger_ms=1)
    await consumer.start()
    await producer.start()
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=100, max_records=2000)
            futures = []
            for messages in batches.values():
                for m in messages:
                    key, value = fn(m.key, m.value)
                    futures.append(await producer.send(dst, value, key=key))
            if futures:
                await asyncio.gather(*futures)
                await consumer.commit()
    finally:
        await producer.stop()
        await consumer.stop()


def run_faust(bootstrap: str, src: str, dst: str) -> None:
    import faust

    app = faust.App(f"bench-faust-{src}", broker=f"kafka://{bootstrap}", key_serializer="raw",
                    value_serializer="raw", topic_partitions=PARTITIONS, producer_acks=-1,
                    broker_session_timeout=6, web_bind="127.0.0.1", web_port=free_port(),
                    datadir=tempfile.mkdtemp(prefix="bench-faust-"))
    source = app.topic(src, key_type=bytes, value_type=bytes)
    sink = app.topic(dst, key_type=bytes, value_type=bytes)

    @app.agent(source)
    async def forward(stream: Any) -> None:
        async for key, value in stream.items():
            await sink.send(key=key, value=value)

    app.main()  # reads sys.argv: "worker -l warn"


def run_runtime_floor(bootstrap: str, src: str, dst: str) -> None:
    """The worker's consumer and producer path without its core: what scoring costs nothing would leave."""
    import faust

    from stream_app.kafka.batch_send import PartitionBatches, delivered, ensure_metadata
    from stream_app.kafka.compat import acknowledge, micro_batches, raw_producer, set_fetch_max_wait
    from stream_app.kafka.transport import broker_url
    from stream_app.worker import collector

    s = Settings.from_env(bootstrap_servers=bootstrap)  # STREAM_APP_BATCH_SIZE etc. as the worker reads them
    collector.set_thresholds(s.gc_threshold_values())  # the worker's garbage collector settings
    app = faust.App(f"bench-floor-{src}", broker=broker_url(bootstrap, fetch_verified_offsets=True),
                    key_serializer="raw", value_serializer="raw", topic_partitions=PARTITIONS, producer_acks=-1,
                    broker_session_timeout=6, web_bind="127.0.0.1", web_port=free_port(),
                    datadir=tempfile.mkdtemp(prefix="bench-floor-"), consumer_auto_offset_reset="earliest",
                    stream_buffer_maxsize=s.stream_buffer_maxsize, producer_max_batch_size=s.producer_batch_bytes)
    set_fetch_max_wait(app, s.fetch_max_wait_ms)
    source = app.topic(src, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

    @app.agent(source)
    async def forward(stream: Any) -> None:
        producer = raw_producer(app)
        partitions = await ensure_metadata(producer, dst)
        collector.freeze_startup()  # as the worker does once it is ready
        in_flight: list[Any] = []
        async for events in micro_batches(stream, s.batch_size, s.batch_window_ms / 1000):
            batches = PartitionBatches(producer, partitions)
            for event in events:
                batches.add(dst, cast(bytes, event.key), cast(bytes, event.value))  # a raw topic: bytes
            sent = asyncio.ensure_future(delivered(batches.send()))

            async def confirm(sent: Any = sent, events: Any = events) -> None:
                await sent
                await acknowledge(stream, events)

            in_flight.append(asyncio.ensure_future(confirm()))
            while len(in_flight) >= s.max_in_flight_batches:
                await in_flight.pop(0)

    app.main()  # reads sys.argv: "worker -l warn"


# -- the harness ---------------------------------------------------------------------------------
@dataclass
class Figures:
    contender: str
    events: int
    eps: float
    latency_rate: float = 0.0
    latency_sent: int = 0
    latency_received: int = 0
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    p50_produced_ms: float = float("nan")  # to the output record's timestamp: when the producer took it
    p99_produced_ms: float = float("nan")
    peak_rss_mb: float = float("nan")
    cpu_us_per_event: float = float("nan")
    cpu_us_per_event_at_rate: float = float("nan")  # phase 2: small batches, cards with more history


def make_events(n: int, seed: int) -> list[tuple[bytes, bytes, str]]:
    out = []
    for item in simulate(GeneratorConfig(seed=seed, n_customers=20_000)):
        out.append((item.tx.card_id.encode(), item.tx.to_bytes(), item.tx.tx_id))
        if len(out) == n:
            return out
    return out


async def publish(bootstrap: str, topic: str, events: list[tuple[bytes, bytes, str]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=ACKS, linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value, _ in events]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


class OutputReader:
    """Reads a contender's output topic from the start; remembers each record's arrival and timestamp."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                         fetch_max_wait_ms=5, enable_auto_commit=False)
        self.timestamps: list[int] = []
        self.arrived: dict[str, float] = {}
        self.produced: dict[str, float] = {}  # tx_id -> its output record's timestamp, on the monotonic clock
        self.wall_offset = time.time() - time.monotonic()

    async def __aenter__(self) -> OutputReader:
        await self.consumer.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.consumer.stop()

    async def until(self, n: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while len(self.timestamps) < n and time.monotonic() < deadline:
            await self.poll(200)
        return len(self.timestamps) >= n

    async def poll(self, timeout_ms: int) -> None:
        batches = await self.consumer.getmany(timeout_ms=timeout_ms)
        now = time.monotonic()
        for messages in batches.values():
            for m in messages:
                self.timestamps.append(m.timestamp)
                tx_id = orjson.loads(m.value)["tx_id"]
                self.arrived.setdefault(tx_id, now)
                self.produced.setdefault(tx_id, m.timestamp / 1000 - self.wall_offset)


async def open_loop(bootstrap: str, topic: str, events: list[tuple[bytes, bytes, str]], rate: float,
                    reader: OutputReader) -> dict[str, float]:
    """Send on the clock, read concurrently; returns tx_id -> scheduled send time (monotonic)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=ACKS, linger_ms=1)
    await producer.start()
    scheduled: dict[str, float] = {}
    done = asyncio.Event()

    async def read() -> None:
        while not done.is_set():
            await reader.poll(20)

    reading = asyncio.create_task(read())
    try:
        start = time.monotonic()
        futures = []
        for i, (key, value, tx_id) in enumerate(events):
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            scheduled[tx_id] = due
            futures.append(await producer.send(topic, value, key=key))
        await asyncio.gather(*futures)
        deadline = time.monotonic() + 30
        while sum(t in reader.arrived for t in scheduled) < len(scheduled) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        done.set()
        await reading
        await producer.stop()
    return scheduled


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux /proc)."""
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            pass
    return out


def peak_rss_mb(pid: int) -> float:
    """Peak RSS of the worker processes: the largest of the tree (a supervisor's children are alike)."""
    peaks = []
    for member in process_tree(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks.append(int(line.split()[1]) / 1024)
        except OSError:
            pass
    return max(peaks, default=float("nan"))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its descendants so far."""
    ticks = 0
    for member in process_tree(pid):
        try:
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
        except (OSError, IndexError, ValueError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


class Contender:
    """One contender's process and topics, started and stopped by the harness."""

    def __init__(self, name: str, bootstrap: str, workdir: Path) -> None:
        self.name, self.bootstrap = name, bootstrap
        self.env = {**topic_env(f"bench-{name}-{uuid.uuid4().hex[:6]}", PARTITIONS), "STREAM_APP_LOG_LEVEL": "warning"}
        self.settings = Settings.from_env(self.env, bootstrap_servers=bootstrap)
        self.src, self.dst = self.settings.transactions_topic, self.settings.scores_topic
        self.workdir = workdir / name
        self.worker: WorkerProcess | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def create_topics(self) -> None:
        if self.name in WORKERS:
            create_topics(self.settings)
        else:
            specs = [TopicSpec(t, PARTITIONS) for t in (self.src, self.dst)]
            asyncio.run(ensure_topics(self.bootstrap, specs, timeout_s=20))

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.name in WORKERS:
            n = WORKERS[self.name]
            worker = WorkerProcess(self.bootstrap, self.workdir, self.env, args=["--processes", str(n)])
            while n > 1 and not all(port_is_free(worker.web_port + i) for i in range(1, n)):
                worker = WorkerProcess(self.bootstrap, self.workdir, self.env, args=["--processes", str(n)])
            self.worker = worker.start()
            return
        argv = [sys.executable, __file__, "--contender", self.name, "--bootstrap", self.bootstrap,
                "--src", self.src, "--dst", self.dst]
        if self.name in ("faust", "runtime_floor"):
            argv += ["worker", "-l", "warn"]
        log = (self.workdir / "contender.log").open("ab")
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                        preexec_fn=die_with_parent, cwd=self.workdir)

    @property
    def pid(self) -> int:
        proc = self.worker.process if self.worker else self.process
        assert proc is not None
        return proc.pid

    def stop(self) -> float:
        rss = peak_rss_mb(self.pid)
        if self.worker is not None:
            self.worker.stop()
        elif self.process is not None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
        return rss

    def log_tail(self) -> str:
        if self.worker is not None:
            return self.worker.log()[-2000:]
        path = self.workdir / "contender.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""


async def measure(contender: Contender, phase1: list[tuple[bytes, bytes, str]],
                  phase2: list[tuple[bytes, bytes, str]], rate: float | None) -> Figures:
    await publish(contender.bootstrap, contender.src, phase1)
    contender.start()
    figures = Figures(contender.name, len(phase1), float("nan"))
    try:
        async with OutputReader(contender.bootstrap, contender.dst) as reader:
            await reader.until(1, timeout_s=120)
            cpu0, seen0 = cpu_seconds(contender.pid), len(reader.timestamps)
            if not await reader.until(len(phase1), timeout_s=60 + len(phase1) / 1000):
                print(f"  {contender.name}: only {len(reader.timestamps)}/{len(phase1)} outputs\n"
                      f"{contender.log_tail()}", file=sys.stderr)
            ts = reader.timestamps
            if len(ts) > seen0:
                figures.cpu_us_per_event = (cpu_seconds(contender.pid) - cpu0) / (len(ts) - seen0) * 1e6
            if len(ts) > 1:
                figures.eps = (len(ts) - 1) / max(1e-3, (max(ts) - min(ts)) / 1000)
            print(f"  {contender.name}: {figures.eps:,.0f} events/s over {len(ts)} outputs", file=sys.stderr)
            if rate is None:
                rate = min(5000.0, figures.eps / 2)
            figures.latency_rate = rate
            events = phase2[: max(1, int(rate * len(phase2) / 5000))]  # phase2 holds 5k/s x seconds
            cpu0 = cpu_seconds(contender.pid)
            scheduled = await open_loop(contender.bootstrap, contender.src, events, rate, reader)
            figures.cpu_us_per_event_at_rate = (cpu_seconds(contender.pid) - cpu0) / max(1, len(scheduled)) * 1e6
            latencies = [(reader.arrived[t] - due) * 1000 for t, due in scheduled.items() if t in reader.arrived]
            figures.latency_sent, figures.latency_received = len(scheduled), len(latencies)
            figures.p50_ms, figures.p99_ms = percentile(latencies, 0.5), percentile(latencies, 0.99)
            figures.max_ms = max(latencies, default=float("nan"))
            produced = [(reader.produced[t] - due) * 1000 for t, due in scheduled.items() if t in reader.produced]
            figures.p50_produced_ms = percentile(produced, 0.5)
            figures.p99_produced_ms = percentile(produced, 0.99)
    finally:
        figures.peak_rss_mb = contender.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000, help="events in the throughput phase")
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, help="events/s of the latency phase (default: half stream_app's "
                        "phase-1 maximum, at most 5k/s)")
    parser.add_argument("--only", default="a,b,c,d", help="contenders to run, e.g. a,d")
    parser.add_argument("--bootstrap", default="", help="a loopback broker; default: start the embedded one")
    parser.add_argument("--json", type=Path, help="write all figures here")
    parser.add_argument("--runs", type=int, default=1, help="repeat the contenders, interleaved; report medians")
    parser.add_argument("--contender", choices=[c for c in CONTENDERS.values() if c not in WORKERS],
                        help=argparse.SUPPRESS)
    parser.add_argument("--src", help=argparse.SUPPRESS)
    parser.add_argument("--dst", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.contender:
        sys.argv = [sys.argv[0], *rest]
        if args.contender in ("faust", "runtime_floor"):
            (run_faust if args.contender == "faust" else run_runtime_floor)(args.bootstrap, args.src, args.dst)
        else:
            runner = run_passthrough if args.contender == "passthrough" else run_naive
            asyncio.run(runner(args.bootstrap, args.src, args.dst))
        return
    if args.bootstrap and args.bootstrap.rsplit(":", 1)[0] not in {"127.0.0.1", "localhost", "[::1]"}:
        parser.error("--bootstrap must be a loopback address: this benchmark floods the broker")
    if args.rate is not None and not 0 < args.rate <= 5000:
        parser.error("--rate must be in (0, 5000]: the latency phase's events are made for 5k/s")
    names = [CONTENDERS[c] for c in ["d", *[x for x in "abcef" if x in args.only]] if c in args.only]
    events = make_events(args.n + int(5000 * args.latency_seconds), seed=11)
    phase1, phase2 = events[: args.n], events[args.n:]
    runs: list[dict[str, Figures]] = []
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        broker = None if args.bootstrap else EmbeddedBroker().start()
        bootstrap = args.bootstrap or broker.bootstrap  # type: ignore[union-attr]
        try:
            for run in range(args.runs):
                results: dict[str, Figures] = {}
                rate = args.rate
                for name in names:
                    print(f"run {run + 1}/{args.runs}, {name}: {args.n} events ...", file=sys.stderr, flush=True)
                    contender = Contender(name, bootstrap, Path(tmp))
                    contender.create_topics()
                    results[name] = asyncio.run(measure(contender, phase1, phase2, rate))
                    rate = results[name].latency_rate  # every contender gets stream_app's rate
                runs.append(results)
                if args.runs > 1:
                    print(f"\nrun {run + 1}:")
                    table(results)
        finally:
            if broker is not None:
                broker.stop()
    report(runs, args.json)


def table(results: dict[str, Figures]) -> None:
    print(f"{'contender':<14} {'events/s':>10} {'CPU µs/ev':>9} {'rate':>7} {'CPU µs/ev':>9} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'max ms':>8} {'p50 prod':>8} {'p99 prod':>8} {'recv':>11} {'peak RSS MB':>11}")
    for f in results.values():
        print(f"{f.contender:<14} {f.eps:>10,.0f} {f.cpu_us_per_event:>9.0f} {f.latency_rate:>7,.0f} "
              f"{f.cpu_us_per_event_at_rate:>9.0f} {f.p50_ms:>8.1f} {f.p99_ms:>8.1f} {f.max_ms:>8.1f} "
              f"{f.p50_produced_ms:>8.1f} {f.p99_produced_ms:>8.1f} "
              f"{f.latency_received:>5}/{f.latency_sent:<5} {f.peak_rss_mb:>11.0f}")


def ratios(results: dict[str, Figures]) -> dict[str, float]:
    """stream_app's events/s against every other contender's (and the runtime floor's against the pass-through)."""
    eps = {k: v.eps for k, v in results.items()}
    out = {}
    if "stream_app" in eps:
        out = {f"ratio_vs_{k}": eps["stream_app"] / v for k, v in eps.items() if k != "stream_app" and v > 0}
    if "ratio_vs_stream_app_x2" in out:
        out["x2_vs_x1"] = 1 / out.pop("ratio_vs_stream_app_x2")
    if "runtime_floor" in eps and eps.get("passthrough", 0) > 0:
        out["floor_vs_passthrough"] = eps["runtime_floor"] / eps["passthrough"]
    return out


def medians(runs: list[dict[str, Figures]]) -> dict[str, Figures]:
    """Every figure's median over the runs, contender by contender."""
    out = {}
    for name in runs[0]:
        figures = [r[name] for r in runs]
        values = {k: type(v)(statistics.median(getattr(f, k) for f in figures))
                  for k, v in asdict(figures[0]).items() if isinstance(v, (int, float))}
        out[name] = Figures(**{**asdict(figures[0]), **values})
    return out


def report(runs: list[dict[str, Figures]], json_path: Path | None) -> None:
    results = medians(runs)
    print(f"\nmedians of {len(runs)} interleaved runs:" if len(runs) > 1 else "")
    table(results)
    per_run = [ratios(r) for r in runs]
    ratio = {k: statistics.median(r[k] for r in per_run) for k in per_run[0]}
    p99 = results["stream_app"].p99_ms if "stream_app" in results else float("nan")
    if "passthrough" in results and "stream_app" in results:
        print(f"stream_app p99 {p99:.1f} ms vs passthrough p99 + 50 ms = {results['passthrough'].p99_ms + 50:.1f} ms "
              "(issue 14's goal)")
    if json_path is not None:
        json_path.write_text(json.dumps({"runs": [[asdict(f) for f in r.values()] for r in runs],
                                         "medians": [asdict(f) for f in results.values()], **ratio}, indent=2))
    fields = " ".join(f"{k}_eps={v.eps:.0f}" for k, v in results.items())
    print(f"RESULT {fields} " + " ".join(f"{k}={v:.3f}" for k, v in ratio.items()) + f" p99_ms={p99:.1f}")


if __name__ == "__main__":
    main()
