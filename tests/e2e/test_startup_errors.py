"""Common set-up mistakes through the CLI, as a user makes them: one line on stderr, a non-zero exit,
no traceback, within a bound (the broker check itself gives up after 10 s; the rest is start-up under load)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stream_app.models.onnx_model import card_path, packaged_model_path, sha256_file

BOUND_S = 60.0  # generous for a loaded 2-core CI machine; measured 1-2 s for a broker mistake when idle
UNREACHABLE = "127.0.0.1:1"  # nothing listens on port 1: connection refused


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "STREAM_APP_"))}
    return {**env, "STREAM_APP_DATA_DIR": str(tmp_path / "data"), **extra}


def _run(args: list[str], env: dict[str, str]) -> tuple[int, list[str], float]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "stream_app.cli", *args], capture_output=True, text=True,
                          timeout=BOUND_S + 30, env=env)
    return proc.returncode, [line for line in proc.stderr.splitlines() if line.strip()], time.monotonic() - started


def _assert_one_line(code: int, lines: list[str], seconds: float, expected_code: int, *needles: str) -> None:
    assert code == expected_code, (code, lines)
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0] and "Unclosed" not in lines[0], lines
    assert all(n in lines[0] for n in needles), (needles, lines[0])
    assert seconds < BOUND_S, seconds


@pytest.mark.parametrize("args", [
    ["worker"], ["worker", "--create-topics"], ["generate", "--count", "5"], ["topics"],
    ["batch", "--from-topic", "transactions", "--output", "OUT"], ["demo", "--seconds", "1"],
], ids=" ".join)
def test_unreachable_broker_is_one_line_naming_the_address(args: list[str], tmp_path: Path) -> None:
    args = [str(tmp_path / "out.jsonl") if a == "OUT" else a for a in args]
    code, lines, seconds = _run(args, _env(tmp_path, KAFKA_BOOTSTRAP_SERVERS=UNREACHABLE))
    _assert_one_line(code, lines, seconds, 1, f"cannot reach the Kafka broker at {UNREACHABLE}",
                     "KAFKA_BOOTSTRAP_SERVERS")


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_web_port_in_use_is_one_line_naming_port_and_setting(taken_port: int, tmp_path: Path) -> None:
    # Local checks come before the broker's: no broker is needed to hear about the port.
    env = _env(tmp_path, KAFKA_BOOTSTRAP_SERVERS=UNREACHABLE, STREAM_APP_WEB_PORT=str(taken_port))
    code, lines, seconds = _run(["worker"], env)
    _assert_one_line(code, lines, seconds, 2, f"port {taken_port}", f"STREAM_APP_WEB_PORT={taken_port}")


def _bad_model(tmp_path: Path, problem: str) -> Path:
    model = tmp_path / "model.onnx"
    if problem == "missing":
        return model
    if problem == "directory":
        return tmp_path
    model.write_bytes(b"not an onnx model")  # not_onnx: with a card that matches its bytes
    card = json.loads(card_path(packaged_model_path()).read_text())
    card_path(model).write_text(json.dumps({**card, "sha256": sha256_file(model)}))
    return model


@pytest.mark.parametrize(("command", "problem"), [
    ("worker", "missing"), ("worker", "not_onnx"), ("batch", "directory"), ("batch", "not_onnx"), ("demo", "missing"),
])
def test_unusable_model_file_is_one_line_naming_path_and_setting(command: str, problem: str, tmp_path: Path) -> None:
    model = _bad_model(tmp_path, problem)
    rows = tmp_path / "in.jsonl"
    rows.write_text("")
    args = {"worker": ["worker"], "demo": ["demo", "--seconds", "1"],
            "batch": ["batch", "--input", str(rows), "--output", str(tmp_path / "out.jsonl")]}[command]
    # The worker is pointed at no broker: the model is checked first, before anything connects or starts.
    env = _env(tmp_path, STREAM_APP_ONNX_MODEL=str(model),
               **({"KAFKA_BOOTSTRAP_SERVERS": UNREACHABLE} if command == "worker" else {}))
    code, lines, seconds = _run(args, env)
    _assert_one_line(code, lines, seconds, 2, f"STREAM_APP_ONNX_MODEL: {model}")


def test_unusable_challenger_names_its_own_setting(tmp_path: Path) -> None:
    rows = tmp_path / "in.jsonl"
    rows.write_text("")
    env = _env(tmp_path, STREAM_APP_CHALLENGER_MODEL=str(tmp_path / "challenger.onnx"))
    code, lines, seconds = _run(["batch", "--input", str(rows), "--output", str(tmp_path / "out.jsonl")], env)
    _assert_one_line(code, lines, seconds, 2, "STREAM_APP_CHALLENGER_MODEL:", "challenger.onnx: no such file")
