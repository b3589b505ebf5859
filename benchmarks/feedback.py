"""Label learning throughput and label-to-model lag, on the embedded broker with a real worker.

1. In process: examples applied per second by the online learner (River + stacker + quality).
2. End to end: N transactions are scored, then their N labels published at once; prints labels/s
   joined into the examples log, the lag from a label's publication to its example in the log, and
   labels/s until the worker's own model has applied them all (its ``stream_app_examples_applied_total``,
   polled every 100 ms): label -> join -> examples log -> model.
Run: python benchmarks/feedback.py [--n 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from throughput import cpu_seconds  # this directory's: the CPU of a process and its children

from stream_app.devtools.broker import EmbeddedBroker
from stream_app.devtools.generator import GeneratorConfig, label_record, simulate
from stream_app.devtools.worker_process import WorkerProcess
from stream_app.domain.entities import EntityTable, featurize_model
from stream_app.domain.learning import Example, OnlineLearner, PrequentialMetrics
from stream_app.kafka.topics import create_topics
from stream_app.models.river_model import RiverScorer
from stream_app.models.stacker import Stacker
from stream_app.settings import Settings


def in_process(items: list) -> float:  # type: ignore[type-arg]
    """Examples of the served vector (card + entity features) applied per second by the online learner."""
    states: dict = {}
    table = EntityTable()
    examples = [Example(i.tx.tx_id, featurize_model(states, table, i.tx, 7 * 86_400_000), i.is_fraud,
                        {"onnx": 0.1, "river": 0.1, "risk": 0.1}, "analyst", 0) for i in items]
    learner = OnlineLearner(RiverScorer(), Stacker(), PrequentialMetrics())
    items = list(enumerate(examples))
    slice_ = Settings().batch_slice  # the worker's learner applies the log a slice at a time
    start = time.perf_counter()
    for i in range(0, len(items), slice_):
        learner.apply_many([(ex, offset) for offset, ex in items[i:i + slice_]])
    rate = len(examples) / (time.perf_counter() - start)
    if learner.other_feature_set:  # a vector the model does not take is skipped, not learned: no figure then
        raise SystemExit(f"{learner.other_feature_set} examples were not of the model's feature set")
    return rate


async def count_until(bootstrap: str, topics: list[tuple[str, int]], n: int, timeout_s: float) -> list[int]:
    """Timestamps (ms) at which records arrived, until n of them."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=10, auto_offset_reset="earliest")
    await consumer.start()
    arrivals: list[int] = []
    try:
        tps = [TopicPartition(t, p) for t, parts in topics for p in range(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout_s
        while len(arrivals) < n and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            now = int(time.time() * 1000)
            arrivals += [now] * sum(len(m) for m in batches.values())
        return arrivals
    finally:
        await consumer.stop()


def examples_applied(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("stream_app_examples_applied_total"))


class AppliedWatch(threading.Thread):
    """Polls the worker's metrics until its model has applied ``n`` examples; ``at_ms``: when it saw them,
    ``cpu_s``: the worker's CPU seconds spent since the watch started (the label path's cost, a figure that
    varies less with the machine's load than the rate)."""

    def __init__(self, port: int, pid: int, n: int, timeout_s: float) -> None:
        super().__init__(daemon=True)
        self.port, self.pid, self.n, self.deadline = port, pid, n, time.monotonic() + timeout_s
        self.cpu0 = cpu_seconds(pid)
        self.at_ms: int | None = None
        self.cpu_s = float("nan")

    def run(self) -> None:
        while time.monotonic() < self.deadline:
            if examples_applied(self.port) >= self.n:
                self.at_ms = int(time.time() * 1000)
                self.cpu_s = cpu_seconds(self.pid) - self.cpu0
                return
            time.sleep(0.1)


async def publish(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        await asyncio.gather(*[await producer.send(topic, v, key=k) for k, v in messages])
    finally:
        await producer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=20000)
    args = parser.parse_args()
    items = list(simulate(GeneratorConfig(seed=5, n_customers=3000), days=30))[: args.n]
    print(f"in process: {in_process(items):,.0f} examples/s applied (River + stacker + quality)", flush=True)
    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory() as tmp:
        s = Settings.from_env(bootstrap_servers=broker.bootstrap)
        create_topics(s)
        worker = WorkerProcess(broker.bootstrap, Path(tmp) / "w").start()
        try:
            worker.wait_ready()
            asyncio.run(publish(broker.bootstrap, s.transactions_topic,
                                [(i.tx.card_id.encode(), i.tx.to_bytes()) for i in items]))
            scored = asyncio.run(count_until(broker.bootstrap, [(s.scores_topic, s.partitions)], len(items), 300))
            print(f"scored {len(scored)} transactions", flush=True)
            labels = [(i.tx.card_id.encode(), orjson.dumps(label_record(i, i.tx.ts_ms))) for i in items]
            before = int(examples_applied(worker.web_port))
            assert worker.process is not None  # started above
            applied = AppliedWatch(worker.web_port, worker.process.pid, before + len(items), 180)
            start_ms = int(time.time() * 1000)
            applied.start()
            asyncio.run(publish(broker.bootstrap, s.labels_topic, labels))
            arrivals = asyncio.run(count_until(broker.bootstrap, [(s.examples_topic, 1)], len(items), 120))
            if len(arrivals) < len(items):
                print(f"only {len(arrivals)} labels joined; worker log tail:\n{worker.log()[-3000:]}", flush=True)
            applied.join()
        finally:
            worker.stop()
    seconds = (arrivals[-1] - start_ms) / 1000 if arrivals else float("nan")
    lags = sorted(a - start_ms for a in arrivals)
    print(f"end to end: {len(arrivals)} of {len(items)} labels joined in {seconds:.1f} s = "
          f"{len(arrivals) / seconds:,.0f} labels/s; first example after {lags[0]} ms")
    model_s = (applied.at_ms - start_ms) / 1000 if applied.at_ms else float("nan")
    print(f"to the model: all {len(items)} applied by the worker's model {model_s:.1f} s after the first label "
          f"= {len(items) / model_s:,.0f} labels/s; worker CPU {applied.cpu_s / len(items) * 1e6:.0f} µs a label")
    print(f"RESULT labels={len(arrivals)} labels_per_s={len(arrivals) / seconds:.0f} "
          f"model_labels_per_s={len(items) / model_s:.0f} "
          f"worker_cpu_us_per_label={applied.cpu_s / len(items) * 1e6:.0f}", file=sys.stdout)


if __name__ == "__main__":
    main()
