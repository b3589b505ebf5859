"""End to end through the CLI, as a user runs it: `stream-app demo --seconds N`."""

from __future__ import annotations

import os
import re
import subprocess
import sys

DEMO_ENV = {**{k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"},
            "STREAM_APP_DRIFT_WINDOW": "2000"}


def _drift_line(stdout: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith("drift detected"))


def test_demo_runs_scores_alerts_and_summarises() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "stream_app.cli", "demo", "--seconds", "20", "--rate", "400"],
        capture_output=True, text=True, timeout=300, env=DEMO_ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    match = re.fullmatch(
        r"RESULT scored=(\d+) alerts=(\d+) dlq=(\d+) frauds_injected=(\d+) frauds_alerted=(\d+) "
        r"p50_ms=([\d.]+) p99_ms=([\d.]+)", last)
    assert match, last
    scored, alerts, dlq, injected, alerted = map(int, match.groups()[:5])
    p50, p99 = map(float, match.groups()[5:])
    assert scored >= 7000  # 20 s at 400/s, less the malformed ones
    assert dlq > 0 and injected > 0
    assert alerted / injected >= 0.3 and alerts >= alerted
    assert 0 < p50 <= p99
    assert "ALERT " in proc.stdout and "summary" in proc.stdout
    assert "missing 0" in proc.stdout and "duplicates 0" in proc.stdout
    assert "amount_eur" not in _drift_line(proc.stdout), "amounts as in training: no drift reported"


def test_demo_drift_scenario_fires_the_drift_monitor() -> None:
    """Amounts x3 from second 8 on: the worker's PSI monitor reports the amount features."""
    proc = subprocess.run(
        [sys.executable, "-m", "stream_app.cli", "demo", "--seconds", "20", "--rate", "400", "--drift-at", "8",
         "--quiet"], capture_output=True, text=True, timeout=300, env=DEMO_ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    drifted = _drift_line(proc.stdout)
    assert "amount_eur" in drifted and "log_amount" in drifted, drifted


def test_every_command_has_help() -> None:
    for command in ([], ["demo"], ["worker"], ["broker"], ["batch"], ["generate"], ["train"]):
        proc = subprocess.run([sys.executable, "-m", "stream_app.cli", *command, "--help"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "usage: stream-app" in proc.stdout, command
    assert "KAFKA_BOOTSTRAP_SERVERS" in subprocess.run(
        [sys.executable, "-m", "stream_app.cli", "--help"], capture_output=True, text=True, timeout=60).stdout


def test_broker_command_prints_its_address_and_stops() -> None:
    proc = subprocess.run([sys.executable, "-m", "stream_app.cli", "broker", "--no-wait"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"export KAFKA_BOOTSTRAP_SERVERS=127\.0\.0\.1:\d+", proc.stdout)


def test_worker_without_bootstrap_is_a_clear_error() -> None:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    proc = subprocess.run([sys.executable, "-m", "stream_app.cli", "worker"], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 2 and "KAFKA_BOOTSTRAP_SERVERS" in proc.stderr


def _processes_mentioning(text: str) -> list[int]:
    """Pids whose command line or environment mention ``text`` (a broker address)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        if text.encode() in cmdline or f"KAFKA_BOOTSTRAP_SERVERS={text}".encode() in environ:
            found.append(int(entry))
    return found


def test_ctrl_c_stops_the_demo_cleanly_without_orphans() -> None:
    import signal
    import time

    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    proc = subprocess.Popen([sys.executable, "-m", "stream_app.cli", "demo", "--seconds", "120", "--rate", "200"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout is not None
    address = None
    deadline = time.monotonic() + 120
    for line in proc.stdout:
        if m := re.search(r"on (127\.0\.0\.1:\d+)", line):
            address = m.group(1)
        if line.startswith("worker ready") or time.monotonic() > deadline:
            break
    assert address and _processes_mentioning(address), "broker and worker are running"
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert out.strip().splitlines()[-1].startswith("RESULT scored=")
    time.sleep(0.5)
    assert _processes_mentioning(address) == [], "no broker or worker left behind"
