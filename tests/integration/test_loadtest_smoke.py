"""Smoke run of the load generator's CLI against a real worker: proves the tooling works end to end."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from loadtests.run import main
from stream_app.devtools.worker_process import WorkerProcess


def test_tiny_fixed_profile_scores_every_event_and_writes_the_report(
        kafka_bootstrap: str, app_env: dict[str, str], worker: WorkerProcess, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out, ledger = tmp_path / "report", tmp_path / "ledger.jsonl"
    code = main(["--profile", "fixed", "--rate", "100", "--duration", "3", "--malformed-rate", "0.03",
                 "--bootstrap", kafka_bootstrap, "--allow-remote",  # testcontainers may answer a host name
                 "--transactions-topic", app_env["STREAM_APP_TRANSACTIONS_TOPIC"],
                 "--scores-topic", app_env["STREAM_APP_SCORES_TOPIC"], "--dlq-topic", app_env["STREAM_APP_DLQ_TOPIC"],
                 "--metrics-url", f"http://127.0.0.1:{worker.web_port}/metrics",
                 "--ledger", str(ledger), "--out", str(out), "--drain-timeout", "20"])

    report = orjson.loads((out / "report.json").read_bytes())
    assert code == 0, capsys.readouterr().out
    assert report["sent"] == report["planned"] == 300 and report["send_errors"] == 0
    assert report["lost"] == 0 and report["scored"] == report["valid_sent"] > 0
    assert report["malformed_dead_lettered"] == report["malformed_sent"]
    latency = report["latency_ms"]
    ordered = [latency[k] for k in ("p50", "p90", "p99", "p999", "max")]
    assert ordered == sorted(ordered) and ordered[0] > 0
    assert report["lag"] and report["per_second"]
    for name in ("latency_over_time.png", "percentile_curve.png", "lag.png"):
        assert (out / name).stat().st_size > 1000
    lines = [orjson.loads(line) for line in ledger.read_bytes().splitlines()]
    assert len(lines) == 300 and sum(not x["valid"] for x in lines) == report["malformed_sent"]
    assert all("offset" in x for x in lines)
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"RESULT sent=300 scored={report['scored']} lost=0 ")
