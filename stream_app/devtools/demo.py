"""`stream-app demo`: the whole service on one machine, with nothing to set up.

Starts the embedded broker, creates the topics, starts a worker process, publishes synthetic
payments (with injected fraud, malformed events and delayed labels), prints alerts as they arrive,
then drains, stops everything it started and prints a summary ending in a machine-readable line.

Event times are simulated from the moment the traffic starts, and run much faster than the clock (a
simulated day in seconds): the cards then have days of history, with their daily rhythm, in a demo of
a minute, which is what the models were trained on. The demo says so, and its records show it.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream_app.devtools.broker import EmbeddedBroker
from stream_app.devtools.generator import GeneratorConfig
from stream_app.devtools.publisher import TrafficPlan, TrafficReport, publish_traffic, until_signalled
from stream_app.devtools.worker_process import WorkerProcess
from stream_app.domain.events import format_ts
from stream_app.domain.learning import PrequentialMetrics
from stream_app.kafka.security import client_kwargs
from stream_app.kafka.topics import create_topics
from stream_app.settings import Settings

DRAIN_TIMEOUT_S = 20.0


@dataclass(frozen=True, slots=True)
class DemoOptions:
    seconds: float = 60.0
    rate: float = 500.0
    seed: int = 42
    customers: int = 5000
    label_delay_s: float = 5.0
    malformed_rate: float = 0.005
    quiet: bool = False
    drift_at_s: float | None = None  # the drift scenario: amounts x drift_factor from this second on
    drift_factor: float = 3.0


@dataclass
class OutputTally:
    """What the demo reads back from the output topics (the worker's own counts are not trusted)."""

    scored: set[str] = field(default_factory=set)
    duplicate_scores: int = 0
    alerts: set[str] = field(default_factory=set)
    duplicate_alerts: int = 0
    dlq: int = 0
    dlq_reasons: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    examples: int = 0
    quality: PrequentialMetrics = field(default_factory=PrequentialMetrics)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def format_alert(alert: dict[str, Any], pattern: str | None) -> str:
    reasons = ", ".join(f"{r['feature']}={r['value']:g}" for r in alert["reasons"]) or "-"
    truth = f"injected: {pattern}" if pattern else "not an injected fraud"
    return (f"ALERT {alert['decision']:<7} risk={alert['risk_score']:.2f} tx={alert['tx_id']} "
            f"card={alert['card_id']} {alert['amount']:.2f} {alert['currency']} {alert['country']} "
            f"| {reasons} | {truth}")


class Demo:
    def __init__(self, settings: Settings, options: DemoOptions) -> None:
        self.settings = settings
        self.options = options
        self.tally = OutputTally()
        self.workdir = Path(tempfile.mkdtemp(prefix="stream-app-demo-"))
        self.worker = WorkerProcess(settings.bootstrap_servers, self.workdir,
                                    {"STREAM_APP_PARTITIONS": str(settings.partitions)})
        self.patterns: dict[str, str] = {}

    async def read_outputs(self, stop: asyncio.Event) -> None:
        s = self.settings
        consumer = AIOKafkaConsumer(bootstrap_servers=s.bootstrap_servers, enable_auto_commit=False,
                                    fetch_max_wait_ms=s.fetch_max_wait_ms,
                                    auto_offset_reset="earliest", **client_kwargs(s))
        await consumer.start()
        try:
            tps = [TopicPartition(t, p) for t in (s.scores_topic, s.alerts_topic, s.dlq_topic)
                   for p in range(s.partitions)] + [TopicPartition(s.examples_topic, 0)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=200, max_records=5000)
                now_ms = time.time() * 1000
                for tp, messages in batches.items():
                    for m in messages:
                        self._tally(tp.topic, orjson.loads(m.value), now_ms)
        finally:
            await consumer.stop()

    def _tally(self, topic: str, record: dict[str, Any], now_ms: float) -> None:
        s, t = self.settings, self.tally
        if topic == s.scores_topic:
            if record["tx_id"] in t.scored:
                t.duplicate_scores += 1
            t.scored.add(record["tx_id"])
            t.latencies_ms.append(now_ms - record["timing"]["source_timestamp_ms"])
        elif topic == s.alerts_topic:
            if record["tx_id"] in t.alerts:
                t.duplicate_alerts += 1
            t.alerts.add(record["tx_id"])
            if not self.options.quiet:
                print(format_alert(record, self.patterns.get(record["tx_id"])), flush=True)
        elif topic == s.examples_topic:
            t.examples += 1
            t.quality.update(bool(record["label"]), record["scores"])
        else:
            t.dlq += 1
            t.dlq_reasons[record["reason"]] = t.dlq_reasons.get(record["reason"], 0) + 1

    def observability_lines(self) -> list[str]:
        """What the worker itself reported: drift events from its log, and where its metrics went."""
        lines = []
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.worker.web_port}/metrics", timeout=5) as r:
                path = self.workdir / "metrics.txt"
                path.write_bytes(r.read())
                lines.append(f"worker metrics (GET /metrics) saved to {path}")
        except OSError as exc:
            lines.append(f"worker metrics not available: {exc}")
        detected = sorted({orjson.loads(line)["feature"] for line in self.worker.log().splitlines()
                           if line.startswith("{") and '"drift.detected"' in line})
        lines.append(f"drift detected (PSI >= {self.settings.drift_psi} vs the model's held-out period): "
                     f"{', '.join(detected) or 'none'}")
        return lines

    def progress(self, report: TrafficReport) -> None:
        self.patterns = report.frauds
        t = self.tally
        event_time = "" if report.last_event_ms is None else f" event_time={format_ts(report.last_event_ms)}"
        print(f"... sent={report.sent} scored={len(t.scored)} alerts={len(t.alerts)} dlq={t.dlq} "
              f"labels={report.labels}{event_time}", file=sys.stderr, flush=True)

    async def run(self, interrupted: asyncio.Event) -> TrafficReport:
        s, o = self.settings, self.options
        self.worker.start()
        await asyncio.to_thread(self.worker.wait_ready)
        print(f"worker ready; publishing {o.rate:.0f} tx/s for {o.seconds:.0f} s "
              f"(broker {s.bootstrap_servers})", flush=True)
        config = GeneratorConfig(seed=o.seed, n_customers=o.customers, start_ms=int(time.time() * 1000))
        print(f"event times are simulated: from now ({format_ts(config.start_ms)}) on, much faster than the "
              "clock (days of card history in a minute; the summary says how much)", flush=True)
        stop_reading = asyncio.Event()
        reader = asyncio.create_task(self.read_outputs(stop_reading))
        plan = TrafficPlan(rate=o.rate, seconds=o.seconds, label_delay_s=o.label_delay_s,
                           malformed_rate=o.malformed_rate, foreign_key_rate=0.01,
                           shift_after_s=o.drift_at_s, shift_factor=o.drift_factor)
        report = await publish_traffic(s.bootstrap_servers, s.transactions_topic, s.labels_topic, config,
                                       plan, on_progress=self.progress, stop=interrupted, **client_kwargs(s))
        self.patterns = report.frauds
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline and not interrupted.is_set():
            if len(self.tally.scored) >= len(report.valid_ids) and self.tally.dlq >= report.malformed:
                break
            await asyncio.sleep(0.2)
        stop_reading.set()
        await reader
        return report


def quality_lines(quality: PrequentialMetrics) -> list[str]:
    """Rolling quality of each score over the last labels, measured on scores given before the label."""
    lines = [f"  rolling quality       (last {quality.window} labels, scores given before each label)"]
    names = {"onnx": "ONNX", "river": "River (online)", "risk": "combined", "challenger": "challenger"}
    for key, m in quality.snapshot().items():
        lines.append(f"    {names.get(key, key):15} AP {m['average_precision']:.3f}  ROC AUC {m['roc_auc']:.3f}  "
                     f"precision {m['precision_at_threshold']:.3f}  recall {m['recall_at_threshold']:.3f}"
                     f"  (at {quality.threshold})")
    return lines


def event_time_line(report: TrafficReport) -> str:
    """How much simulated time the traffic covered, against the wall-clock seconds it took."""
    if report.first_event_ms is None or report.last_event_ms is None or report.seconds <= 0:
        return "  event times (simulated) none sent"
    span_s = (report.last_event_ms - report.first_event_ms) / 1000
    return (f"  event times (simulated) {format_ts(report.first_event_ms)} to {format_ts(report.last_event_ms)}: "
            f"{span_s / 3600:.1f} h in {report.seconds:.1f} s ({span_s / report.seconds:.0f}x the clock)")


def summary(report: TrafficReport, tally: OutputTally) -> str:
    frauds = set(report.frauds)
    alerted = len(frauds & tally.alerts)
    lost = len(report.valid_ids - tally.scored)
    p50, p99 = percentile(tally.latencies_ms, 50), percentile(tally.latencies_ms, 99)
    lines = [
        "",
        "summary",
        f"  transactions sent     {report.sent} ({report.malformed} malformed on purpose) in {report.seconds:.1f} s",
        event_time_line(report),
        f"  scored                {len(tally.scored)} (valid sent {len(report.valid_ids)}, missing {lost}, "
        f"duplicate score records {tally.duplicate_scores})",
        f"  alerts                {len(tally.alerts)} (duplicates {tally.duplicate_alerts})",
        f"  dead-lettered         {tally.dlq} {dict(sorted(tally.dlq_reasons.items()))}",
        f"  injected frauds       {len(frauds)}, alerted {alerted}"
        f" ({100 * alerted / max(1, len(frauds)):.1f} %); alert precision "
        f"{100 * alerted / max(1, len(tally.alerts)):.1f} %",
        f"  labels published      {report.labels}, learned {tally.examples} (joined with their scoring-time features)",
        *quality_lines(tally.quality),
        f"  end-to-end latency    p50 {p50:.1f} ms, p99 {p99:.1f} ms (produce -> score record consumed)",
        f"RESULT scored={len(tally.scored)} alerts={len(tally.alerts)} dlq={tally.dlq} "
        f"frauds_injected={len(frauds)} frauds_alerted={alerted} p50_ms={p50:.1f} p99_ms={p99:.1f}",
    ]
    return "\n".join(lines)


def run_demo(settings: Settings, options: DemoOptions) -> int:
    broker = None if settings.bootstrap_servers else EmbeddedBroker()
    demo: Demo | None = None
    try:
        if broker is not None:
            broker.start()
            settings = replace(settings, bootstrap_servers=broker.bootstrap)
            print(f"embedded broker (Tansu) on {broker.bootstrap}", flush=True)

        create_topics(settings)
        demo = Demo(settings, options)
        report = asyncio.run(until_signalled(demo.run))  # Ctrl-C: traffic ends early, summary and clean-up follow
        for line in demo.observability_lines():
            print(line, flush=True)
        print(summary(report, demo.tally), flush=True)
        ok = len(demo.tally.scored) > 0
        return 0 if ok else 1
    except RuntimeError as exc:
        print(f"stream-app demo: {exc}", file=sys.stderr)
        return 1
    finally:
        if demo is not None:
            demo.worker.stop()
        if broker is not None:
            broker.stop()

