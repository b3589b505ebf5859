"""`stream-app worker --processes 2` on the real broker: two group members sharing the partitions, each
with its own web port; a child killed -9 is started again; SIGTERM to the parent stops every child."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

from outputs import PARTITIONS, produce, read_until, scrape

from stream_app.devtools.broker import port_is_free
from stream_app.devtools.children import alive
from stream_app.devtools.generator import GeneratorConfig, simulate
from stream_app.devtools.worker_process import WorkerProcess
from stream_app.settings import Settings


def _children(worker: WorkerProcess) -> dict[int, int]:
    """index -> pid of the latest start of each child, from the supervisor's log."""
    started = [json.loads(line) for line in worker.log().splitlines() if '"supervisor.child_started"' in line]
    return {entry["index"]: entry["pid"] for entry in started}


def _scored(port: int) -> float:
    return sum(v for (name, _), v in scrape(port).items() if name == "stream_app_events_scored_total")


def test_two_processes_share_the_partitions_restart_a_killed_child_and_stop_on_sigterm(
        kafka_bootstrap: str, app_env: dict[str, str], tmp_path: Path) -> None:
    s = Settings.from_env({**app_env, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap})
    sup = WorkerProcess(kafka_bootstrap, tmp_path / "sup", app_env, args=["--processes", "2"])
    while not port_is_free(sup.web_port + 1):  # the children take WEB_PORT and WEB_PORT + 1
        sup = WorkerProcess(kafka_bootstrap, tmp_path / "sup", app_env, args=["--processes", "2"])
    ports = [sup.web_port, sup.web_port + 1]
    sup.start()
    try:
        sup.wait_ready(after=1)  # both children
        txs = [x.tx for x in simulate(GeneratorConfig(seed=3, n_customers=200), days=2)][:400]
        asyncio.run(produce(kafka_bootstrap, s.transactions_topic, [(t.card_id.encode(), t.to_bytes()) for t in txs]))
        out = asyncio.run(read_until(kafka_bootstrap, [s.scores_topic], PARTITIONS,
                                     lambda o: len(o.of(s.scores_topic)) >= len(txs), timeout_s=90))
        assert sorted(r["tx_id"] for r in out.of(s.scores_topic)) == sorted(t.tx_id for t in txs)
        per_process = [_scored(port) for port in ports]
        assert all(n > 0 for n in per_process) and sum(per_process) == len(txs), per_process
        assert all((tmp_path / "sup" / "data" / f"worker-{i}").is_dir() for i in range(2))  # each its own

        first = _children(sup)
        os.kill(first[0], signal.SIGKILL)
        sup.wait_ready(after=2)  # started again
        assert _children(sup)[0] != first[0] and alive(_children(sup)[1])
        exited = [json.loads(line) for line in sup.log().splitlines() if '"supervisor.child_exited"' in line]
        assert [(e["index"], e["exit_code"]) for e in exited] == [(0, -signal.SIGKILL)]

        pids = list(_children(sup).values())
        t0 = time.monotonic()
        assert sup.process is not None
        sup.process.send_signal(signal.SIGTERM)  # the parent only, as a supervisor (systemd, k8s) does
        assert sup.process.wait(timeout=40) == 0, sup.log()[-3000:]
        print(f"STOP processes=2 seconds={time.monotonic() - t0:.2f}")
        assert not [pid for pid in pids if alive(pid)]
    finally:
        sup.stop()
