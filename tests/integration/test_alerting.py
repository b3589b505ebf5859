"""The shipped alerting rules and dashboard, checked by a real Prometheus scraping a real worker.

Debian's ``prometheus`` package (installed by .ci/run) brings ``promtool`` and ``prometheus``; without
them this test fails, it does not skip. Prometheus runs on a free loopback port with its own storage,
scrapes only the test's worker every second and evaluates the rules every second. It loads a copy of
monitoring/alerts.yml whose ``for:`` durations are set to 0s (the only change): the shipped durations
(5-15 min) would make the test wait that long; the expressions are the shipped ones.

One cold worker (empty card states) gets two phases of generated traffic with labels: unshifted with
5 % malformed messages (the dead-letter alert fires; the drift monitor reports nothing), then the same
kind of traffic with amounts x3 (the drift alert fires on the amount features). Every query of the
Grafana dashboard then returns data, and stopping the worker fires the not-ready alert.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream_app.devtools.broker import free_port
from stream_app.devtools.generator import GeneratorConfig
from stream_app.devtools.publisher import TrafficPlan, TrafficReport, publish_traffic
from stream_app.devtools.worker_process import WorkerProcess
from stream_app.domain.features import DAY_MS
from stream_app.settings import Settings

MONITORING = Path(__file__).parents[2] / "monitoring"
RATE = 200.0


def _tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} not found: install Debian's prometheus package (.ci/run does: apt-get install prometheus)"
    return path


def _get(port: int, path: str, **params: str) -> Any:
    url = f"http://127.0.0.1:{port}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _wait(what: str, check: Callable[[], Any], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = check()
        except OSError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.5)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[int], int]]:
    """``start(worker_port) -> prometheus_port``: a real Prometheus scraping that worker only."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(worker_port: int) -> int:
        rules = re.sub(r"(?m)^(\s+)for: \S+$", r"\1for: 0s", (MONITORING / "alerts.yml").read_text())
        (tmp_path / "alerts.yml").write_text(rules)
        (tmp_path / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "rule_files: [alerts.yml]\n"
            "scrape_configs:\n"
            "  - job_name: stream_app\n"
            "    metrics_path: /metrics\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{worker_port}']}}]\n")
        port = free_port()
        log = (tmp_path / "prometheus.log").open("wb")
        processes.append(subprocess.Popen(
            [_tool("prometheus"), f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
             "--log.level=warn"], stdout=log, stderr=subprocess.STDOUT))
        _wait("prometheus ready", lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2)
              .status == 200, 60)
        return port

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=30)


def _firing(port: int, name: str) -> list[dict[str, str]]:
    return [a["labels"] for a in _get(port, "/api/v1/alerts")["data"]["alerts"]
            if a["labels"]["alertname"] == name and a["state"] == "firing"]


def _drift_logged(worker: WorkerProcess) -> set[str]:
    return {orjson.loads(line)["feature"] for line in worker.log().splitlines()
            if line.startswith("{") and '"drift.detected"' in line}


def _publish(bootstrap: str, s: Settings, config: GeneratorConfig, plan: TrafficPlan) -> TrafficReport:
    return asyncio.run(publish_traffic(bootstrap, s.transactions_topic, s.labels_topic, config, plan))


def test_rules_load_fire_on_their_conditions_and_every_dashboard_query_has_data(
        kafka_bootstrap: str, app_env: dict[str, str], tmp_path: Path,
        prometheus: Callable[[int], int]) -> None:
    check = subprocess.run([_tool("promtool"), "check", "rules", str(MONITORING / "alerts.yml")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "SUCCESS: 6 rules found" in check.stdout, check.stdout + check.stderr

    s = Settings.from_env({**app_env, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap})
    worker = WorkerProcess(kafka_bootstrap, tmp_path / "worker",
                           {**app_env, "STREAM_APP_DRIFT_WINDOW": "2000", "STREAM_APP_CHECKPOINT_INTERVAL_S": "2"})
    worker.start()
    try:
        worker.wait_ready()
        port = prometheus(worker.web_port)
        _wait("the worker scraped and ready", lambda: any(
            r["value"][1] == "1" for r in _get(port, "/api/v1/query", query="stream_app_ready")["data"]["result"]), 60)

        # Phase 1: a cold worker, unshifted traffic with labels and 5 % malformed messages.
        config = GeneratorConfig(seed=21, n_customers=500, fraud_rate=0.05)
        sent = _publish(kafka_bootstrap, s, config, TrafficPlan(rate=RATE, seconds=12, label_delay_s=1.0,
                                                                 malformed_rate=0.05))
        assert sent.malformed > 0
        dlq = _wait("StreamAppDeadLetterRateHigh firing", lambda: _firing(port, "StreamAppDeadLetterRateHigh"), 90)
        assert dlq[0]["severity"] == "page"
        _wait("the drift monitor judging amounts", lambda: _get(
            port, "/api/v1/query", query='stream_app_drift_psi{feature="amount_eur"}')["data"]["result"], 90)
        assert _drift_logged(worker) == set(), "unshifted traffic on a cold worker: no drift"
        assert _firing(port, "StreamAppDriftDetected") == []

        # Phase 2: amounts x3 (a unit or currency bug upstream), later event times, other tx_ids.
        shifted = GeneratorConfig(seed=22, n_customers=500, fraud_rate=0.05, start_ms=config.start_ms + 10 * DAY_MS)
        _publish(kafka_bootstrap, s, shifted, TrafficPlan(rate=RATE, seconds=8, label_delay_s=1.0,
                                                          malformed_rate=0.05, shift_after_s=0.0))
        drift = _wait("StreamAppDriftDetected firing", lambda: _firing(port, "StreamAppDriftDetected"), 90)
        assert {"amount_eur", "log_amount"} <= {a["feature"] for a in drift}
        assert {"amount_eur", "log_amount"} <= _drift_logged(worker)

        dashboard = json.loads((MONITORING / "grafana" / "dashboards" / "stream_app.json").read_text())
        queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
        assert len(queries) >= 19
        deadline = time.monotonic() + 60
        while True:
            empty = [q for q in queries if not _get(port, "/api/v1/query", query=q)["data"]["result"]]
            if not empty or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert empty == [], f"dashboard queries without data: {empty}"
        assert _firing(port, "StreamAppWorkerNotReady") == []
    finally:
        worker.stop()
    _wait("StreamAppWorkerNotReady firing once the worker is gone",
          lambda: _firing(port, "StreamAppWorkerNotReady"), 30)
