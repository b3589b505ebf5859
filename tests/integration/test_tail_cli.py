"""`stream-app tail` as a user runs it, on a real broker with a real worker: the real console script in a
subprocess, started before the traffic, shows the live alerts and dead letters (and nothing older), its
`--json` lines parse, its filters select what the output topics hold, no card number or terminal control
byte reaches its output, and SIGTERM ends it with exit 0. What the tails print is compared with the
topics read back independently (tests/integration/outputs.py)."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from outputs import PARTITIONS, Outputs, produce, read_until

from stream_app.devtools.broker import free_port
from stream_app.devtools.generator import GeneratorConfig, simulate
from stream_app.devtools.worker_process import WorkerProcess
from stream_app.domain.pan import PanTokenizer
from stream_app.settings import Settings

STREAM_APP = str(Path(sys.executable).parent / "stream-app")
KEY = "tail-test-pan-key-0123456789"
PAN = "4111111111111111"
TOKEN = PanTokenizer(KEY.encode()).token(PAN)
HOSTILE = b'\x1b]0;owned\x07\x1b[2J {"card_id": "' + PAN.encode() + b'", '  # not JSON: a dead letter


class Tail:
    """A running `stream-app tail`; threads collect its stdout and stderr lines (bytes, as printed)."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen([STREAM_APP, "tail", *args], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.readers = [threading.Thread(target=lambda p=pipe, ls=lines: ls.extend(iter(p.readline, b"")), daemon=True)
                        for pipe, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self.readers:
            reader.start()

    def wait_for(self, what: str, check: Callable[[], bool], timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while not check():
            assert self.proc.poll() is None, f"tail exited ({self.proc.returncode}) before {what}: {self.err}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {self.err}"
            time.sleep(0.1)

    def ready(self) -> Tail:
        self.wait_for("its start line", lambda: any(b"tailing " in e for e in self.err))
        return self

    def text(self) -> list[str]:
        return [ln.decode().rstrip("\n") for ln in self.out]

    def finish(self) -> int:
        """Its exit code, once it has exited and its last lines are collected."""
        code = self.proc.wait(timeout=60)
        for reader in self.readers:
            reader.join(timeout=10)
        return code

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.finish()


def dump(env: dict[str, str], *args: str) -> list[str]:
    """`stream-app tail --from-beginning --exit-at-end ARGS` (a script's use): its stdout lines."""
    proc = subprocess.run([STREAM_APP, "tail", "--from-beginning", "--exit-at-end", *args], env=env,
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert PAN.encode() not in proc.stdout
    return proc.stdout.decode().splitlines()


def records(lines: list[str]) -> list[dict[str, Any]]:
    return [json.loads(ln)["record"] for ln in lines]


def tx_of(line: str) -> str:
    found = re.search(r" tx=(\S+) ", line)
    assert found, line
    return found.group(1)


def test_tail_follows_alerts_and_dead_letters_live_with_filters(kafka_bootstrap: str, app_env: dict[str, str],
                                                                tmp_path: Path) -> None:
    s = Settings.from_env({**app_env, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap})
    env = {**os.environ, **app_env, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "STREAM_APP_PAN_KEY": KEY}
    worker = WorkerProcess(kafka_bootstrap, tmp_path / "worker", {**app_env, "STREAM_APP_PAN_KEY": KEY}).start()
    tails: dict[str, Tail] = {}
    try:
        worker.wait_ready()
        # A dead letter from before the tails start: "new messages only" must not show it.
        asyncio.run(produce(kafka_bootstrap, s.transactions_topic, [(b"old", b"[1, 2]")]))
        old = asyncio.run(read_until(kafka_bootstrap, [s.dlq_topic], PARTITIONS, lambda o: bool(o.of(s.dlq_topic)),
                                     60)).of(s.dlq_topic)
        tails = {"alerts": Tail(env, s.alerts_topic), "json": Tail(env, s.alerts_topic, "--json"),
                 "dlq": Tail(env, s.dlq_topic)}
        for tail in tails.values():
            tail.ready()

        items = list(simulate(GeneratorConfig(seed=5, n_customers=300, fraud_rate=0.05), days=3))
        with_pan = dataclasses.replace(items[-1].tx, tx_id="tx-with-pan", card_id=PAN)
        messages = [(i.tx.card_id.encode(), i.tx.to_bytes()) for i in items]
        messages += [(b"hostile", HOSTILE), (PAN.encode(), with_pan.to_bytes())]
        asyncio.run(produce(kafka_bootstrap, s.transactions_topic, messages))
        out: Outputs = asyncio.run(read_until(
            kafka_bootstrap, [s.scores_topic, s.alerts_topic, s.dlq_topic], PARTITIONS,
            lambda o: len(o.of(s.scores_topic)) >= len(items) + 1 and len(o.of(s.dlq_topic)) >= 2, timeout_s=180))
        scores, alerts = out.of(s.scores_topic), out.of(s.alerts_topic)
        [new_dead_letter] = [r for r in out.of(s.dlq_topic) if b"owned" in base64.b64decode(r["original_b64"])]
        assert len(scores) == len(items) + 1 and alerts, "the worker scored everything and alerted"

        tails["alerts"].wait_for("every alert", lambda: len(tails["alerts"].out) >= len(alerts))
        tails["json"].wait_for("every alert as JSON", lambda: len(tails["json"].out) >= len(alerts))
        tails["dlq"].wait_for("the new dead letter", lambda: len(tails["dlq"].out) >= 1)
        codes = {name: tail.terminate() for name, tail in tails.items()}
    finally:
        for tail in tails.values():
            if tail.proc.poll() is None:
                tail.proc.kill()
        worker.stop()

    assert codes == {"alerts": 0, "json": 0, "dlq": 0}, codes
    assert all(tail.err[-1].startswith(b"stopped (signal)") for tail in tails.values())
    raw = b"".join(line for tail in tails.values() for line in tail.out)
    assert PAN.encode() not in raw and not re.search(rb"[\x00-\x09\x0b-\x1f\x7f]", raw), "no PAN, no control byte"

    # Live alerts: one readable line per alert, with what an analyst reads first, nothing else.
    by_tx = {a["tx_id"]: a for a in alerts}
    lines = tails["alerts"].text()
    assert sorted(tx_of(ln) for ln in lines) == sorted(by_tx)
    for ln in lines:
        a = by_tx[tx_of(ln)]
        assert re.match(r"\d{4}-\d\d-\d\dT[\d:.]+Z ALERT +(review|decline) +risk=[\d.]+ ", ln), ln
        assert f"{a['decision']} " in ln and f"card={a['card_id']} " in ln and f" {a['currency']} {a['country']} " in ln
        assert all(f"{r['feature']}=" in ln for r in a["reasons"])
    assert sorted(records(tails["json"].text()), key=lambda r: r["tx_id"]) == sorted(alerts, key=lambda r: r["tx_id"])

    # The dead letter: only the new one, its reason, where it came from, a safe preview (PAN masked).
    [dlq_line] = tails["dlq"].text()
    src = new_dead_letter["source"]
    assert f"DEAD-LETTER {new_dead_letter['reason']} " in dlq_line
    assert f" from {src['topic']}@{src['partition']}:{src['offset']} " in dlq_line
    assert "| \\x1b]0;owned\\x07\\x1b[2J {\"card_id\": \"tok_" in dlq_line

    # Filters, in dump mode: AND across flags, OR within one.
    risky = dump(env, s.scores_topic, "--json", "--decision", "review", "--decision", "decline")
    assert sorted(r["tx_id"] for r in records(risky)) == sorted(r["tx_id"] for r in scores
                                                                 if r["decision"] != "approve")
    card = next(a["card_id"] for a in alerts
                if any(r["card_id"] == a["card_id"] and r["decision"] == "approve" for r in scores))
    approved = dump(env, s.scores_topic, "--json", "--card", card, "--decision", "approve")
    assert sorted(r["tx_id"] for r in records(approved)) == sorted(
        r["tx_id"] for r in scores if r["card_id"] == card and r["decision"] == "approve")
    reason = alerts[0]["reasons"][0]["feature"]
    assert sorted(records(dump(env, s.alerts_topic, "--json", "--reason", reason)), key=lambda r: r["tx_id"]) == sorted(
        (a for a in alerts if reason in [r["feature"] for r in a["reasons"]]), key=lambda r: r["tx_id"])
    [pan_line] = dump(env, s.scores_topic, "--card", PAN)  # a card number is looked up by its token
    assert " tx=tx-with-pan " in pan_line and f" card={TOKEN} " in pan_line
    assert [r["reason"] for r in old] == ["not_an_object"] and new_dead_letter["reason"] == "invalid_json"
    assert dump(env, s.dlq_topic, "--reason", "invalid_json") == [dlq_line]
    assert len(dump(env, s.dlq_topic)) == 2  # the old one is there, from the beginning


def test_only_new_messages_even_after_a_batch_of_several(kafka_bootstrap: str,
                                                         topic_factory: Callable[..., str]) -> None:
    """On Tansu, ListOffsets(latest) answers the last batch's base offset + 1 when a producer batch held
    several records (docs/notes/tansu.md): the tail still starts after all of them."""
    topic = topic_factory(1)
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    asyncio.run(produce(kafka_bootstrap, topic, [(None, f'{{"n": "old {i}"}}'.encode()) for i in range(3)]))
    tail = Tail(env, topic, "--max", "1").ready()
    asyncio.run(produce(kafka_bootstrap, topic, [(None, b'{"n": "new"}')]))
    assert tail.finish() == 0, tail.err
    assert [ln.split(" ", 1)[1] for ln in tail.text()] == ['JSON        {"n":"new"}']
    assert tail.err[-1].startswith(b"stopped (max): 1 shown of 1 read")


def test_unknown_topic_and_silent_broker_are_one_line_and_exit_1(kafka_bootstrap: str) -> None:
    for bootstrap, topic, expected in ((kafka_bootstrap, "fraud-alertz", "topic 'fraud-alertz' does not exist"),
                                       (f"127.0.0.1:{free_port()}", "scores", "cannot reach the Kafka broker")):
        proc = subprocess.run([STREAM_APP, "tail", topic], env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap},
                              capture_output=True, text=True, timeout=60)
        assert (proc.returncode, proc.stdout) == (1, ""), proc
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("stream-app tail: ") and expected in proc.stderr
