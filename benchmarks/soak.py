"""Soak: one `stream-app worker` for a long time at a steady moderate rate, with labels; does it stay healthy?

Starts the embedded broker (or uses --bootstrap, loopback only) and one worker process, publishes synthetic
transactions open-loop at --rate for --minutes with their labels --label-delay seconds later, and every
--sample-s seconds records the worker's RSS (/proc), its /metrics (consumer lag, events scored, labels
learned, dead letters by reason, card states) and what the score topic holds (read back
here, distinct tx_ids). A progress line goes to stderr every --progress-s seconds. At the end (after a
drain of up to --drain-s) it counts the worker log's error/critical JSON lines and any line that is not JSON,
writes report.json and soak.png (RSS and lag over time) to --out and prints a machine-readable last line:

  RESULT minutes=… sent=… scored=… lost=… rss_start_mb=… rss_end_mb=… rss_max_mb=… max_lag=… errors=…

``minutes`` is the traffic's (the drain is in the report); ``sent`` counts valid transactions (malformed ones,
--malformed-rate, go to the DLQ and are reported by reason); ``lost`` = valid sent but never scored;
``max_lag`` = the largest "sent, not yet scored" seen; the worker's own consumer lag is in the report too.
RSS growth per hour is the least-squares slope over the second half of the samples (the first half includes the
warm-up: card states filling up), besides end - start. The worker's log stays in --out/worker/worker.log.
Run: python benchmarks/soak.py [--minutes 30] [--rate 300] [--out soak-report]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import sys
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from stream_app.devtools.broker import EmbeddedBroker
from stream_app.devtools.generator import GeneratorConfig
from stream_app.devtools.publisher import TrafficPlan, TrafficReport, publish_traffic
from stream_app.devtools.worker_process import WorkerProcess, topic_env
from stream_app.kafka.topics import create_topics
from stream_app.settings import Settings

PARTITIONS = 4
LOOPBACK = {"127.0.0.1", "localhost", "[::1]"}


@dataclass(frozen=True, slots=True)
class Sample:
    t_s: float  # since the worker was ready
    sent: int  # valid transactions sent so far
    scored: int  # distinct tx_ids in the scores topic
    rss_mb: float
    worker_lag: float | None  # sum of stream_app_consumer_lag_messages (None: /metrics not readable)
    scored_metric: float | None  # stream_app_events_scored_total
    labels_learned: float | None  # stream_app_examples_applied_total
    card_states: float | None

    @property
    def outstanding(self) -> int:
        return self.sent - self.scored


@dataclass
class Soak:
    options: dict[str, Any]
    samples: list[Sample] = field(default_factory=list)
    traffic: TrafficReport = field(default_factory=TrafficReport)
    scored_ids: set[str] = field(default_factory=set)
    duplicate_scores: int = 0
    dead_letters: dict[str, float] = field(default_factory=dict)  # "topic reason" -> count, from /metrics
    rss_hwm_mb: float = float("nan")
    traffic_end_s: float = float("nan")  # since the worker was ready; the drain follows


def rss_mb(pid: int, field_name: str = "VmRSS") -> float:
    """A process's resident (VmRSS) or peak resident (VmHWM) memory in MB; NaN once it has gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """The worker's /metrics as {sample name: [(labels, value)]}; empty when it cannot be read."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def total(metrics: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float | None:
    values = metrics.get(name)
    return None if values is None else sum(v for _, v in values)


async def read_scores(soak: Soak, bootstrap: str, topic: str, stop: asyncio.Event) -> None:
    """Collect the tx_id of every score record (a consumer without group, from the start)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                                fetch_max_wait_ms=200)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        while not stop.is_set():
            for messages in (await consumer.getmany(timeout_ms=500, max_records=5000)).values():
                for m in messages:
                    tx_id = orjson.loads(m.value)["tx_id"]
                    if tx_id in soak.scored_ids:
                        soak.duplicate_scores += 1
                    soak.scored_ids.add(tx_id)
    finally:
        await consumer.stop()


async def sample(soak: Soak, worker: WorkerProcess, t0: float) -> Sample:
    assert worker.process is not None
    t_s = round(time.monotonic() - t0, 1)
    m = await asyncio.to_thread(scrape, worker.web_port)
    dlq = m.get("stream_app_events_dead_lettered_total", [])
    soak.dead_letters.update({f"{labels['topic']} {labels['reason']}": v for labels, v in dlq})
    s = Sample(t_s, soak.traffic.sent - soak.traffic.malformed, len(soak.scored_ids),
               rss_mb(worker.process.pid), total(m, "stream_app_consumer_lag_messages"),
               total(m, "stream_app_events_scored_total"), total(m, "stream_app_examples_applied_total"),
               total(m, "stream_app_card_states"))
    soak.samples.append(s)
    return s


def progress(s: Sample, soak: Soak, minutes: float) -> None:
    print(f"[{s.t_s / 60:5.1f}/{minutes:g} min] sent={s.sent} scored={s.scored} outstanding={s.outstanding} "
          f"worker_lag={s.worker_lag} rss={s.rss_mb:.0f} MB labels_learned={s.labels_learned} "
          f"cards={s.card_states} labels_sent={soak.traffic.labels}",
          file=sys.stderr, flush=True)


async def soak_run(args: argparse.Namespace, settings: Settings, worker: WorkerProcess, soak: Soak) -> None:
    """Traffic, sampling and read-back side by side; then a drain until every valid event is scored."""
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, interrupted.set)  # Ctrl-C: stop early, still report
    stop_reading = asyncio.Event()
    reader = asyncio.create_task(read_scores(soak, settings.bootstrap_servers, settings.scores_topic, stop_reading))
    t0 = time.monotonic()
    traffic_done = asyncio.Event()

    def keep(report: TrafficReport) -> None:
        soak.traffic = report

    async def sampler() -> None:
        last_progress = -1e9
        while True:
            s = await sample(soak, worker, t0)
            if s.t_s - last_progress >= args.progress_s:
                progress(s, soak, args.minutes)
                last_progress = s.t_s
            if worker.process is not None and worker.process.poll() is not None:
                print(f"worker exited with {worker.process.returncode}", file=sys.stderr, flush=True)
                interrupted.set()
                return
            if traffic_done.is_set() and (s.outstanding <= 0 or time.monotonic() > drain_deadline):
                return
            try:
                await asyncio.wait_for(interrupted.wait(), args.sample_s)
                return
            except TimeoutError:
                pass

    drain_deadline = float("inf")
    sampling = asyncio.create_task(sampler())
    plan = TrafficPlan(rate=args.rate, seconds=args.minutes * 60, label_delay_s=args.label_delay,
                       malformed_rate=args.malformed_rate, linger_ms=args.linger_ms)
    soak.traffic = await publish_traffic(settings.bootstrap_servers, settings.transactions_topic,
                                         settings.labels_topic, GeneratorConfig(seed=args.seed,
                                                                                n_customers=args.customers),
                                         plan, on_progress=keep, stop=interrupted)
    drain_deadline = time.monotonic() + args.drain_s
    soak.traffic_end_s = round(time.monotonic() - t0, 1)
    traffic_done.set()
    await sampling
    await sample(soak, worker, t0)  # the final state, after the drain
    stop_reading.set()
    await reader


def log_findings(log_path: Path) -> dict[str, Any]:
    """Error/critical JSON lines by event, and the lines that are not JSON objects (there should be none)."""
    errors: Counter[str] = Counter()
    not_json = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError:
            not_json.append(line[:300])
            continue
        if record.get("level") in ("error", "critical"):
            errors[str(record.get("event", ""))[:200]] += 1
    return {"errors": sum(errors.values()), "errors_by_event": dict(errors.most_common(20)),
            "not_json_lines": len(not_json), "not_json_sample": not_json[:10]}


def growth_mb_per_h(samples: list[Sample]) -> float:
    """Least-squares RSS slope over the second half of the samples, in MB per hour."""
    half = samples[len(samples) // 2:]
    if len(half) < 2 or half[-1].t_s - half[0].t_s <= 0:
        return float("nan")
    slope, _ = np.polyfit([s.t_s for s in half], [s.rss_mb for s in half], 1)
    return float(slope * 3600)


def summarize(soak: Soak, rss_start: float, findings: dict[str, Any]) -> dict[str, Any]:
    samples = soak.samples
    rss = [s.rss_mb for s in samples if s.rss_mb == s.rss_mb]
    lags = [s.worker_lag for s in samples if s.worker_lag is not None]
    last = samples[-1]
    valid = soak.traffic.valid_ids
    return {
        "minutes": round(soak.traffic.seconds / 60, 2),  # of traffic
        "traffic_end_s": soak.traffic_end_s,
        "drain_s": round(last.t_s - soak.traffic_end_s, 1),
        "sent": len(valid),
        "malformed_sent": soak.traffic.malformed,
        "labels_sent": soak.traffic.labels,
        "scored": len(soak.scored_ids & valid),
        "scored_metric": last.scored_metric,
        "duplicate_scores": soak.duplicate_scores,
        "lost": len(valid - soak.scored_ids),
        "labels_learned": last.labels_learned,
        "dead_letters": soak.dead_letters,
        "rss_start_mb": round(rss_start, 1),
        "rss_end_mb": round(rss[-1], 1) if rss else float("nan"),
        "rss_max_mb": round(max(rss), 1) if rss else float("nan"),
        "rss_hwm_mb": round(soak.rss_hwm_mb, 1),
        "rss_growth_mb": round(rss[-1] - rss_start, 1) if rss else float("nan"),
        "rss_growth_mb_per_h": round(growth_mb_per_h(samples), 1),
        "max_lag": max(s.outstanding for s in samples),
        "max_worker_lag": max(lags) if lags else None,
        "card_states": last.card_states,
        **findings,
    }


def nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else value


def plot(samples: list[Sample], summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    minutes = [s.t_s / 60 for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    top.plot(minutes, [s.rss_mb for s in samples], label="worker RSS")
    top.set_ylabel("RSS (MB)")
    top.grid(True, alpha=0.3)
    states = top.twinx()
    states.plot(minutes, [nan_if_none(s.card_states) for s in samples], ":", color="grey", label="card states")
    states.set_ylabel("card states")
    lines, labels = top.get_legend_handles_labels()
    more, more_labels = states.get_legend_handles_labels()
    top.legend(lines + more, labels + more_labels, loc="upper left", fontsize="small")
    top.set_title(f"Soak: {summary['sent']} sent, {summary['scored']} scored, {summary['lost']} lost, "
                  f"RSS {summary['rss_start_mb']:.0f} -> {summary['rss_end_mb']:.0f} MB "
                  f"({summary['rss_growth_mb_per_h']:+.0f} MB/h), {summary['errors']} error lines")
    bottom.plot(minutes, [s.outstanding for s in samples], label="sent, not yet scored")
    bottom.plot(minutes, [nan_if_none(s.worker_lag) for s in samples],
                label="worker consumer lag (/metrics)")
    for ax in (top, bottom):
        ax.axvline(summary["traffic_end_s"] / 60, color="black", linewidth=0.8, linestyle="--")
    bottom.text(summary["traffic_end_s"] / 60, 0, " traffic ends", fontsize="small", va="bottom")
    bottom.set_xlabel("minutes since the worker was ready")
    bottom.set_ylabel("events")
    bottom.grid(True, alpha=0.3)
    bottom.legend(loc="upper left", fontsize="small")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=300.0, help="transactions per second")
    parser.add_argument("--label-delay", type=float, default=5.0, help="seconds from a transaction to its label")
    parser.add_argument("--malformed-rate", type=float, default=0.002, help="share dead-lettered on purpose")
    parser.add_argument("--customers", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--progress-s", type=float, default=30.0)
    parser.add_argument("--drain-s", type=float, default=120.0, help="after the traffic, wait this long at most")
    parser.add_argument("--out", type=Path, default=Path("soak-report"))
    parser.add_argument("--bootstrap", default="", help="a loopback broker; default: start the embedded one")
    parser.add_argument("--linger-ms", type=int, default=1000,
                        help="the generator's producer linger (records per batch); with --batch-window-ms, what keeps "
                             "the embedded broker's batch count per partition below its fetch cliff "
                             "(docs/notes/tansu.md)")
    parser.add_argument("--batch-window-ms", type=int, default=1000, help="the worker's STREAM_APP_BATCH_WINDOW_MS")
    args = parser.parse_args()
    if args.bootstrap and args.bootstrap.rsplit(":", 1)[0] not in LOOPBACK:
        parser.error("--bootstrap must be a loopback address")
    workdir = args.out / "worker"
    shutil.rmtree(workdir, ignore_errors=True)  # this script's own previous run
    args.out.mkdir(parents=True, exist_ok=True)
    broker = None if args.bootstrap else EmbeddedBroker().start()
    worker: WorkerProcess | None = None
    try:
        bootstrap = args.bootstrap or broker.bootstrap  # type: ignore[union-attr]
        env = {**topic_env(f"soak-{uuid.uuid4().hex[:6]}", PARTITIONS),
               "STREAM_APP_BATCH_WINDOW_MS": str(args.batch_window_ms)}
        settings = Settings.from_env(env, bootstrap_servers=bootstrap)
        create_topics(settings)
        worker = WorkerProcess(bootstrap, workdir, env).start()
        worker.wait_ready()
        assert worker.process is not None
        rss_start = rss_mb(worker.process.pid)
        print(f"worker ready (RSS {rss_start:.0f} MB); {args.rate:g} tx/s for {args.minutes:g} min, labels after "
              f"{args.label_delay:g} s; log {worker.log_path}", file=sys.stderr, flush=True)
        soak = Soak(options={k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()})
        asyncio.run(soak_run(args, settings, worker, soak))
        soak.rss_hwm_mb = rss_mb(worker.process.pid, "VmHWM")
    finally:
        if worker is not None:
            worker.stop()
        if broker is not None:
            broker.stop()
    summary = summarize(soak, rss_start, log_findings(worker.log_path))
    (args.out / "report.json").write_text(json.dumps(
        {"summary": summary, "options": soak.options, "samples": [asdict(s) for s in soak.samples]}, indent=2))
    plot(soak.samples, summary, args.out / "soak.png")
    for key in ("dead_letters", "errors_by_event", "not_json_sample"):
        if summary[key]:
            print(f"{key}: {json.dumps(summary[key])}", file=sys.stderr)
    print(f"report: {args.out / 'report.json'}, plot: {args.out / 'soak.png'}", file=sys.stderr)
    print(f"RESULT minutes={summary['minutes']} sent={summary['sent']} scored={summary['scored']} "
          f"lost={summary['lost']} rss_start_mb={summary['rss_start_mb']} rss_end_mb={summary['rss_end_mb']} "
          f"rss_max_mb={summary['rss_max_mb']} rss_growth_mb_per_h={summary['rss_growth_mb_per_h']} "
          f"max_lag={summary['max_lag']} errors={summary['errors']} not_json={summary['not_json_lines']}")
    return 0 if summary["lost"] == 0 and summary["errors"] == 0 and summary["not_json_lines"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
