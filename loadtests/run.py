"""``python -m loadtests.run``: run a load profile and write report.json, PNG plots and a RESULT line.

Without ``--bootstrap`` it starts the embedded broker (Tansu) and one ``stream-app worker`` itself, like
``stream-app demo``. It never reads ``KAFKA_BOOTSTRAP_SERVERS``: load goes to loopback or to an address
typed on the command line (a non-loopback one also needs ``--allow-remote``), so a shell pointed at a
shared cluster cannot be loaded by accident.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import signal
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from loadtests.plots import write_plots
from loadtests.profiles import RateProfile, parse_steps
from loadtests.runner import LagSample, LoadOptions, LoadReport, Topics, run_load
from stream_app.devtools.broker import EmbeddedBroker
from stream_app.devtools.worker_process import WorkerProcess
from stream_app.settings import Settings
from stream_app.worker.logs import configure_logging


def is_loopback(bootstrap: str) -> bool:
    """True when every ``host:port`` of ``bootstrap`` is on this machine (127.0.0.0/8, ::1, localhost)."""
    for server in bootstrap.split(","):
        host = server.strip().rsplit(":", 1)[0].strip("[]")
        if host == "localhost":
            continue
        try:
            if not ipaddress.ip_address(host).is_loopback:
                return False
        except ValueError:  # a host name other than localhost
            return False
    return True


def build_profile(args: argparse.Namespace) -> RateProfile:
    if args.profile == "fixed":
        return RateProfile.fixed(args.rate, args.duration or 30.0)
    if args.profile == "step":
        profile = RateProfile.steps(parse_steps(args.steps))
    else:
        profile = RateProfile.ramp(args.ramp_from, args.ramp_to, args.duration or 30.0)
    return profile.truncated(args.duration) if args.duration else profile


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtests.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--profile", choices=("fixed", "step", "ramp"), default="fixed")
    p.add_argument("--rate", type=float, default=1000.0, help="fixed: events/s")
    p.add_argument("--steps", default="200:10,500:10,1000:10", help="step: rate:seconds,rate:seconds,...")
    p.add_argument("--ramp-from", type=float, default=100.0, help="ramp: events/s at the start")
    p.add_argument("--ramp-to", type=float, default=2000.0, help="ramp: events/s at the end")
    p.add_argument("--duration", type=float, default=None,
                   help="seconds (fixed and ramp: default 30; step: cuts the steps off)")
    p.add_argument("--max-events", type=int, default=None, help="stop after this many events")
    p.add_argument("--malformed-rate", type=float, default=0.0, help="share of malformed events (expected in the DLQ)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--customers", type=int, default=5000)
    p.add_argument("--drain-timeout", type=float, default=20.0, help="seconds to wait for missing scores")
    p.add_argument("--bootstrap", default=None, help="broker to load; default: start the embedded one and a worker")
    p.add_argument("--allow-remote", action="store_true", help="accept a --bootstrap that is not loopback")
    p.add_argument("--metrics-url", default=None, help="the worker's /metrics (with --bootstrap), for its lag")
    p.add_argument("--transactions-topic", default=Topics().transactions)
    p.add_argument("--scores-topic", default=Topics().scores)
    p.add_argument("--dlq-topic", default=Topics().dlq)
    p.add_argument("--partitions", type=int, default=4, help="partitions of the embedded run's topics")
    p.add_argument("--ledger", type=Path, default=None, help="JSONL file: one line per event sent")
    p.add_argument("--out", type=Path, default=Path("loadtest-report"), help="directory for report.json and PNGs")
    p.add_argument("--log-level", default="warning")
    return p


@contextmanager
def local_stack(partitions: int, workdir: Path) -> Iterator[tuple[str, Topics, str]]:
    """Embedded broker + topics + one ready worker; yields (bootstrap, topics, worker /metrics URL)."""
    with EmbeddedBroker() as broker:
        settings = Settings.from_env(bootstrap_servers=broker.bootstrap, partitions=partitions)
        from stream_app.kafka.topics import create_topics

        create_topics(settings)
        worker = WorkerProcess(broker.bootstrap, workdir, {"STREAM_APP_PARTITIONS": str(partitions)}).start()
        try:
            worker.wait_ready()
            print(f"embedded broker on {broker.bootstrap}, worker ready (log {worker.log_path})", file=sys.stderr)
            yield broker.bootstrap, Topics.from_settings(settings), f"http://127.0.0.1:{worker.web_port}/metrics"
        finally:
            worker.stop()


def progress(sample: LagSample) -> None:
    lag = "n/a" if sample.worker_lag is None else sample.worker_lag
    print(f"t={sample.t:6.1f}s sent={sample.sent} scored={sample.scored} outstanding={sample.outstanding} "
          f"worker_lag={lag}", file=sys.stderr, flush=True)


async def _run_with_signals(profile: RateProfile, bootstrap: str, topics: Topics, ledger: Path | None,
                            options: LoadOptions) -> LoadReport:
    """Ctrl-C (or SIGTERM) stops sending; the drain, report and clean-up still happen."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return await run_load(profile, bootstrap, topics, ledger=ledger, options=options, stop=stop,
                          on_progress=progress)


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    configure_logging(args.log_level)
    try:
        profile = build_profile(args)
    except ValueError as exc:
        p.error(str(exc))
    if args.bootstrap and not (is_loopback(args.bootstrap) or args.allow_remote):
        p.error(f"--bootstrap {args.bootstrap} is not loopback; add --allow-remote if you mean it")
    with ExitStack() as stack:
        if args.bootstrap:
            bootstrap, metrics_url = args.bootstrap, args.metrics_url
            topics = Topics(args.transactions_topic, args.scores_topic, args.dlq_topic)
        else:
            bootstrap, topics, metrics_url = stack.enter_context(local_stack(args.partitions, args.out / "worker"))
        options = LoadOptions(max_events=args.max_events, malformed_rate=args.malformed_rate, seed=args.seed,
                              customers=args.customers, drain_timeout_s=args.drain_timeout, metrics_url=metrics_url)
        report = asyncio.run(_run_with_signals(profile, bootstrap, topics, args.ledger, options))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(report.to_json())
    plots = write_plots(report, args.out)
    print(f"report: {args.out / 'report.json'}; plots: {', '.join(str(p) for p in plots)}")
    print(report.summary(), flush=True)
    return 0 if report.scored > 0 and report.lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
