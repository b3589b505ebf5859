"""POST /score latency while a worker streams: the real-time door under stream load.

A real `stream-app worker` on the embedded broker (or --bootstrap, loopback), and for ``--doors`` with
``process`` a `stream-app door` beside it (the door in a process of its own, fed from the worker's logs). For
each value of ``--slices`` (``STREAM_APP_BATCH_SLICE``: events of a micro-batch worked on between two yields to
the event loop; a value of at least the batch size is the worker without slicing), a fresh worker is measured
in two phases, each door in turn (``--rounds`` times, alternated):

1. **idle**: ``--connections`` clients post one transaction each to ``/score``, back to back, for
   ``--seconds``;
2. **streaming**: the same, while `stream-app generate` publishes ``--rate`` transactions a second (and
   their labels) to the worker's topics.

Per phase and door: requests/s, p50 / p90 / p99 / max latency as the client sees it, the stream's scored
events/s (from the worker's metrics: whether it kept up with ``--rate``), and the machine's own floor: the p99 of
how late a process that only sleeps 1 ms at a time wakes up meanwhile (``wake p99``). No door answers faster
than the scheduler lets it run: on a machine whose cores the broker, the worker and the clients share, that
floor, not the door, can set the tail. ``--door-cpu N`` gives the door process core N to itself (every other
process of the run, the broker and the worker included, shares the remaining cores): the door on a host where it
has a core of its own, as a separate pod or machine has.

The clients: ``wrk`` (the C load generator the issue measured with; Debian package ``wrk``) when it is on the
PATH, else ``--connections`` aiohttp clients in this process (``--client`` chooses). Both keep
``--connections`` requests outstanding, back to back: the latency includes the wait behind the other
clients' requests, so it falls as the worker's cost of a request falls. A Python client spends its own CPU on
the two cores the worker, the broker and the generator share, and reads higher.
Run: python benchmarks/score_door.py [--rate 1000] [--seconds 20] [--connections 4] [--slices 500]
     [--doors worker,process] [--rounds 1] [--door-cpu N] [--client auto|wrk|aiohttp]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

from stream_app.devtools.broker import EmbeddedBroker
from stream_app.devtools.generator import GeneratorConfig, simulate
from stream_app.devtools.worker_process import WorkerProcess, topic_env
from stream_app.kafka.topics import create_topics
from stream_app.settings import Settings


@dataclass
class Phase:
    slice: int
    door: str  # worker: the worker's own /score; process: `stream-app door`
    name: str
    requests: int
    seconds: float
    quantiles_ms: dict[float, float]  # 0.5, 0.9, 0.99 and 1.0 (the maximum)
    stream_eps: float
    wake_p99_ms: float  # a sleeper's wake-up lateness meanwhile (the scheduler's floor)

    def q(self, p: float) -> float:
        return self.quantiles_ms.get(p, float("nan"))

    def line(self) -> str:
        q = self.q
        return (f"{self.slice:>6} {self.door:<8} {self.name:<10} {self.requests / self.seconds:>8.0f} "
                f"{q(0.5):>7.1f} {q(0.9):>7.1f} {q(0.99):>7.1f} {q(1.0):>8.1f} {self.stream_eps:>10.0f} "
                f"{self.wake_p99_ms:>9.2f}")


QUANTILES = (0.5, 0.9, 0.99, 1.0)


def quantiles(latencies_ms: list[float]) -> dict[float, float]:
    ordered = sorted(latencies_ms)
    return {p: ordered[min(len(ordered) - 1, int(p * len(ordered)))] for p in QUANTILES} if ordered else {}


def scored_total(port: int) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("stream_app_events_scored_total"))


async def hammer(port: int, bodies: list[bytes], connections: int, seconds: float) -> list[float]:
    """``connections`` clients posting back to back; the latency of each answered request in ms."""
    latencies: list[float] = []
    url = f"http://127.0.0.1:{port}/score"
    stop = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:

        async def client(offset: int) -> None:
            i = offset
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                async with session.post(url, data=bodies[i % len(bodies)],
                                        headers={"Content-Type": "application/json"}) as response:
                    await response.read()
                    if response.status == 200:
                        latencies.append((time.perf_counter() - t0) * 1000)
                i += connections

        await asyncio.gather(*(client(c) for c in range(connections)))
    return latencies


#: wrk's script: POST the bodies in turn; at the end one JSON line of answered requests and latency quantiles.
WRK_SCRIPT = """
local bodies = {%s}
local i = 0
request = function()
  i = i %% #bodies + 1
  return wrk.format("POST", "/score", {["Content-Type"] = "application/json"}, bodies[i])
end
done = function(summary, latency, requests)
  io.write(string.format('WRK {"requests": %%d, "non_2xx": %%d, "errors": %%d, "q50": %%d, "q90": %%d, "q99": %%d, '
    .. '"max": %%d}\\n', summary.requests, summary.errors.status, summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max))
end
"""


def wrk(port: int, bodies: list[bytes], connections: int, seconds: float,
        workdir: Path) -> tuple[int, dict[float, float]]:
    """``wrk`` posting ``bodies`` in turn over ``connections`` connections: (answered requests, quantiles in ms)."""
    script = workdir / "score.lua"
    script.write_text(WRK_SCRIPT % ", ".join("[==[" + b.decode() + "]==]" for b in bodies))
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "-s", str(script),
                          f"http://127.0.0.1:{port}/score"], capture_output=True, text=True, check=True).stdout
    line = next(x for x in out.splitlines() if x.startswith("WRK "))
    r = json.loads(line[4:])
    if r["non_2xx"] or r["errors"]:
        raise SystemExit(f"wrk: {r['non_2xx']} answers not 2xx, {r['errors']} socket errors:\n{out}")
    return r["requests"], {p: r[k] / 1000 for p, k in zip(QUANTILES, ("q50", "q90", "q99", "max"), strict=True)}


def pin(child: WorkerProcess, cpus: set[int]) -> None:
    """Every thread of ``child`` on ``cpus`` (threads it starts later inherit their creator's set)."""
    assert child.process is not None
    for task in os.listdir(f"/proc/{child.process.pid}/task"):
        os.sched_setaffinity(int(task), cpus)


#: Sleeps 1 ms at a time for argv[1] seconds; prints the p99 of how late it woke up, in ms.
WAKE_PROBE = """
import sys, time
late, end = [], time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    t0 = time.perf_counter()
    time.sleep(0.001)
    late.append(time.perf_counter() - t0 - 0.001)
late.sort()
print(late[int(0.99 * len(late))] * 1000)
"""


def measure(bootstrap: str, workdir: Path, slice_events: int, args: argparse.Namespace,
            bodies: list[bytes]) -> list[Phase]:
    env = {**topic_env(f"door-{uuid.uuid4().hex[:6]}", 4),
           "STREAM_APP_BATCH_SLICE": str(slice_events)}
    create_topics(Settings.from_env(env, bootstrap_servers=bootstrap))
    worker = WorkerProcess(bootstrap, workdir / f"slice-{slice_events}", env).start()
    doors = {"worker": worker}
    phases = []
    try:
        worker.wait_ready()
        if "process" in args.doors:
            doors["process"] = WorkerProcess(bootstrap, workdir / f"door-{slice_events}", env, command="door").start()
            if args.door_cpu is not None:
                pin(doors["process"], {args.door_cpu})
            doors["process"].wait_ready()
        for door in doors.values():
            asyncio.run(hammer(door.web_port, bodies, args.connections, 2.0))  # warm-up
        for name in ("idle", "streaming"):
            generator = None
            if name == "streaming":
                generator = subprocess.Popen(
                    [sys.executable, "-m", "stream_app.cli", "generate", "--rate", str(args.rate), "--seconds",
                     str(args.seconds * args.rounds * len(doors) + 8), "--label-delay", "2"],
                    env={**os.environ, **env, "KAFKA_BOOTSTRAP_SERVERS": bootstrap},
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(5)  # the stream is flowing before the clock starts
            for _ in range(args.rounds):
                for door_name in (d for d in args.doors if d in doors):
                    port = doors[door_name].web_port
                    before, t0 = scored_total(worker.web_port), time.monotonic()
                    sleeper = subprocess.Popen([sys.executable, "-c", WAKE_PROBE, str(args.seconds)],
                                               stdout=subprocess.PIPE, text=True)
                    if args.client == "wrk":
                        answered, q = wrk(port, bodies, args.connections, args.seconds, workdir)
                    else:
                        latencies = asyncio.run(hammer(port, bodies, args.connections, args.seconds))
                        answered, q = len(latencies), quantiles(latencies)
                    took = time.monotonic() - t0
                    stream_eps = (scored_total(worker.web_port) - before) / took
                    wake_p99 = float(sleeper.communicate(timeout=args.seconds + 30)[0])
                    phases.append(Phase(slice_events, door_name, name, answered, took, q, stream_eps, wake_p99))
                    print(phases[-1].line(), file=sys.stderr, flush=True)
            if generator is not None:
                generator.terminate()
                generator.wait(timeout=30)
    finally:
        for door in reversed(doors.values()):
            door.stop()
    return phases


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=1000.0, help="stream transactions per second while streaming")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    ap.add_argument("--connections", type=int, default=4, help="concurrent /score clients")
    ap.add_argument("--slices", default="500", help="STREAM_APP_BATCH_SLICE values to compare (comma-separated)")
    ap.add_argument("--doors", default="worker,process",
                    help="whose /score: worker (the worker's own), process (`stream-app door` beside it), or both")
    ap.add_argument("--rounds", type=int, default=1, help="measurements of each door per phase, alternated")
    ap.add_argument("--door-cpu", type=int, default=None, metavar="N",
                    help="core N for the door process alone; everything else on the other cores (Linux)")
    ap.add_argument("--bootstrap", default="", help="a loopback broker; default: start the embedded one")
    ap.add_argument("--client", choices=("auto", "wrk", "aiohttp"), default="auto",
                    help="auto: wrk when it is on the PATH, else aiohttp")
    args = ap.parse_args()
    args.doors = [d.strip() for d in args.doors.split(",")]
    if args.door_cpu is not None:
        others = os.sched_getaffinity(0) - {args.door_cpu}
        if args.door_cpu not in os.sched_getaffinity(0) or not others or "process" not in args.doors:
            ap.error("--door-cpu: a core this process may use, another one left for the rest, and the process door")
        os.sched_setaffinity(0, others)  # the broker, the worker, the generator and the clients inherit it
    if not args.doors or set(args.doors) - {"worker", "process"}:
        ap.error("--doors: worker, process or both")
    if args.client == "auto":
        args.client = "wrk" if shutil.which("wrk") else "aiohttp"
    elif args.client == "wrk" and not shutil.which("wrk"):
        ap.error("--client wrk: no wrk on the PATH (Debian: apt-get install wrk)")
    print(f"client: {args.client}, {args.connections} connections", file=sys.stderr)
    txs = [x.tx for x in simulate(GeneratorConfig(seed=5, n_customers=500), days=3)][:2000]
    bodies = [orjson.dumps(t.to_json_dict()) for t in txs]
    header = (f"{'slice':>6} {'door':<8} {'phase':<10} {'req/s':>8} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} "
              f"{'max ms':>8} {'stream ev/s':>10} {'wake p99':>9}")
    print(header, file=sys.stderr)
    results: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="door-") as tmp:
        broker = None if args.bootstrap else EmbeddedBroker().start()
        bootstrap = args.bootstrap or broker.bootstrap  # type: ignore[union-attr]
        try:
            for slice_events in (int(x) for x in args.slices.split(",")):
                results.extend(measure(bootstrap, Path(tmp), slice_events, args, bodies))
        finally:
            if broker is not None:
                broker.stop()
    print(f"client: {args.client}, {args.connections} connections"
          + ("" if args.door_cpu is None else f"; the door alone on core {args.door_cpu}, the rest on the others"))
    print(header)
    for phase in results:
        print(phase.line())
    p99s: dict[str, list[float]] = {}  # medians over the rounds
    for p in results:
        p99s.setdefault(f"p99_ms_slice{p.slice}_{p.door}_{p.name}", []).append(p.q(0.99))
    print("RESULT " + " ".join(f"{k}={statistics.median(v):.1f}" for k, v in p99s.items()))


if __name__ == "__main__":
    main()
