"""End to end through the CLI, as a user runs it: `stream-app demo --seconds N`."""

from __future__ import annotations

import os
import re
import subprocess
import sys


def test_demo_runs_scores_alerts_and_summarises() -> None:
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    proc = subprocess.run(
        [sys.executable, "-m", "stream_app.cli", "demo", "--seconds", "20", "--rate", "400"],
        capture_output=True, text=True, timeout=300, env=env)
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
