"""The throughput benchmark runs end to end on a tiny load: all four contenders, one RESULT line.

A smoke test of the tooling, not a performance assertion: figures come from `benchmarks/throughput.py`
runs, side by side in one run, and are reported in docs/notes/measurements.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_throughput_benchmark_prints_every_figure(kafka_bootstrap: str, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--n", "1500",
                          "--latency-seconds", "1", "--bootstrap", kafka_bootstrap, "--json", str(out)],
                         capture_output=True, text=True, timeout=420, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    last = run.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT ")
    fields = dict(item.split("=") for item in last.split()[1:])
    for name in ("passthrough_eps", "naive_eps", "faust_eps", "stream_app_eps", "ratio_vs_passthrough",
                 "ratio_vs_naive", "ratio_vs_faust", "p99_ms"):
        assert float(fields[name]) > 0, name
    written = json.loads(out.read_text())
    figures = {f["contender"]: f for f in written["medians"]}
    assert set(figures) == {"passthrough", "naive", "faust", "stream_app"} and len(written["runs"]) == 1
    for f in figures.values():
        assert f["latency_received"] == f["latency_sent"] > 0, f
        assert f["p50_ms"] <= f["p99_ms"] <= f["max_ms"]


def test_score_door_benchmark_measures_both_doors(kafka_bootstrap: str, tmp_path: Path) -> None:
    """`score_door.py` on a tiny load: the worker's /score and `stream-app door`'s, idle and streaming, each
    answering (p99 > 0), with the stream scored meanwhile; the door on a core of its own where there are two."""
    cores = sorted(os.sched_getaffinity(0))
    pinned = ["--door-cpu", str(cores[-1])] if len(cores) > 1 else []
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "score_door.py"), "--seconds", "2",
                          "--rate", "200", "--client", "aiohttp", "--bootstrap", kafka_bootstrap, *pinned],
                         capture_output=True, text=True, timeout=420, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    last = run.stdout.strip().splitlines()[-1]
    assert last.startswith("RESULT ")
    fields = {k: float(v) for k, v in (item.split("=") for item in last.split()[1:])}
    assert set(fields) == {f"p99_ms_slice500_{door}_{phase}" for door in ("worker", "process")
                           for phase in ("idle", "streaming")}
    assert all(v > 0 for v in fields.values()), fields
    streaming = [line.split() for line in run.stdout.splitlines() if " streaming " in line]
    assert len(streaming) == 2 and all(float(row[-2]) > 0 for row in streaming), run.stdout  # stream ev/s
    if pinned:
        assert f"the door alone on core {cores[-1]}" in run.stdout
