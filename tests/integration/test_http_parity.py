"""HTTP on a running worker, and parity: the stream, POST /score (the worker's and `stream-app door`'s) and batch
give the same answer."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest
from outputs import PARTITIONS, produce, read_until, scrape

from stream_app.devtools.generator import GeneratorConfig, simulate
from stream_app.devtools.worker_process import WorkerProcess
from stream_app.domain.entities import MODEL_FEATURES
from stream_app.settings import Settings


def call(w: WorkerProcess, path: str, body: bytes | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{w.web_port}{path}", data=body,
                                     method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def test_pages_answer_and_bad_bodies_are_4xx(worker: WorkerProcess) -> None:
    assert call(worker, "/health") == (200, {"status": "ok"})
    deadline = time.monotonic() + 20
    while call(worker, "/ready")[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.5)
    status, body = call(worker, "/ready")
    assert status == 200 and all(body["checks"].values()), body
    status, models = call(worker, "/models")
    assert status == 200 and models["versions"]["onnx"] == models["onnx"]["version"]
    assert call(worker, "/openapi.json")[1]["openapi"].startswith("3.")
    rng = random.Random(7)
    bodies = [b"", b"{", b"[]", b"null", b"[1]", b'{"amount": NaN}', bytes(rng.randrange(256) for _ in range(64))]
    bodies += [orjson.dumps({"tx_id": "t", "amount": rng.choice([-1, "x", None, 1e300])})
               for _ in range(20)]
    for body in bodies:
        status, answer = call(worker, "/score", body)
        assert 400 <= status < 500 and answer["error"], (body, status)


def test_stream_http_and_batch_agree(kafka_bootstrap: str, app_env: dict[str, str], worker: WorkerProcess,
                                     tmp_path: Path) -> None:
    s = Settings.from_env({**app_env, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap})
    items = list(simulate(GeneratorConfig(seed=91, n_customers=150, fraud_rate=0.03), days=2))
    history, probes = items[: int(len(items) * 0.8)], items[int(len(items) * 0.8):]
    # A rule set serving on the worker and given to batch: the rules, too, answer the same at every door.
    rules = tmp_path / "rules.yaml"
    rules.write_text(f"""
lists: {{blocked: [{probes[0].tx.merchant_id}]}}
rules:
  - {{id: blocked, when: merchant_id in blocked, action: decline}}
  - {{id: big, when: amount_eur > 60 and count_1d >= 1, action: review}}
  - {{id: ecom, when: channel == 'ecom', action: decline, mode: shadow}}
""")
    published = subprocess.run([sys.executable, "-m", "stream_app.cli", "rules", "publish", str(rules)],
                               capture_output=True, text=True, timeout=120,
                               env={**os.environ, **app_env, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap})
    assert published.returncode == 0, published.stderr[-2000:]
    deadline = time.monotonic() + 60
    while (call(worker, "/models")[1]["rules"]["serving"] or {}).get("version") != "1":
        assert time.monotonic() < deadline, "rule set not applied"
        time.sleep(0.2)

    def scored(ids: set[str]) -> dict[str, dict[str, Any]]:
        out = asyncio.run(read_until(kafka_bootstrap, [s.scores_topic], PARTITIONS,
                                     lambda o: ids <= {r["tx_id"] for r in o.of(s.scores_topic)}, 120))
        return {r["tx_id"]: r for r in out.of(s.scores_topic) if r["tx_id"] in ids}

    # The door process starts before the history arrives: it follows what the worker writes from then on.
    door = WorkerProcess(kafka_bootstrap, tmp_path / "door", app_env, command="door").start()
    asyncio.run(produce(kafka_bootstrap, s.transactions_topic,
                        [(i.tx.card_id.encode(), i.tx.to_bytes()) for i in history]))
    scored({i.tx.tx_id for i in history})
    # HTTP first (read-only), then the same probes through the stream.
    probes_body = orjson.dumps([i.tx.to_json_dict() for i in probes])
    status, http = call(worker, "/score", probes_body)
    assert status == 200
    by_http = {r["tx_id"]: r for r in http["results"]}
    try:
        door.wait_ready()
        by_door = _door_converges(door, probes_body, by_http)
    finally:
        door.stop()
    assert door.process is not None and door.process.returncode == 0, door.log()[-2000:]
    # The probes one at a time, in event-time order, as HTTP and batch see them: a merchant's features depend
    # on the order its cards' events arrive in, and Kafka orders no two partitions (docs/concepts/entities.md).
    for i in probes:
        before = scrape(worker.web_port)[("stream_app_events_scored_total", ())]
        asyncio.run(produce(kafka_bootstrap, s.transactions_topic, [(i.tx.card_id.encode(), i.tx.to_bytes())]))
        deadline = time.monotonic() + 30
        while scrape(worker.web_port)[("stream_app_events_scored_total", ())] == before:
            assert time.monotonic() < deadline, i.tx.tx_id
            time.sleep(0.02)
    by_stream = scored({i.tx.tx_id for i in probes})
    status, again = call(worker, "/score", probes[0].tx.to_bytes())
    assert again["status"] == "duplicate"  # the stream has seen it now: it would not score it again

    batch_in, batch_out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    batch_in.write_bytes(b"\n".join(i.tx.to_bytes() for i in items) + b"\n")
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    env["STREAM_APP_DATA_DIR"] = str(tmp_path / "batch-data")
    proc = subprocess.run([sys.executable, "-m", "stream_app.cli", "batch", "--input", str(batch_in),
                           "--output", str(batch_out), "--rules", str(rules)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    by_batch = {r["tx_id"]: r for r in map(orjson.loads, batch_out.read_bytes().splitlines())}

    assert set(by_http) == set(by_stream) == {i.tx.tx_id for i in probes} <= set(by_batch)
    for tx_id, stream in by_stream.items():
        for door_name, other in (("http", by_http[tx_id]), ("door", by_door[tx_id]), ("batch", by_batch[tx_id])):
            assert [other["features"][n] for n in MODEL_FEATURES] == pytest.approx(
                [stream["features"][n] for n in MODEL_FEATURES], rel=1e-9, abs=1e-9), (door_name, tx_id)
            assert other["scores"]["onnx"] == pytest.approx(stream["scores"]["onnx"], abs=1e-6), (door_name, tx_id)
            assert other["scores"]["river"] == pytest.approx(stream["scores"]["river"], abs=1e-6), (door_name, tx_id)
            assert other["risk_score"] == pytest.approx(stream["risk_score"], abs=1e-6), (door_name, tx_id)
            assert other["decision"] == stream["decision"], (door_name, tx_id)
            assert {**other["rules"], "version": "-"} == {**stream["rules"], "version": "-"}, (door_name, tx_id)
    assert any(r["rules"]["decided_by"] for r in by_stream.values())
    assert any(h["mode"] == "shadow" for r in by_stream.values() for h in r["rules"]["hits"])


def _door_converges(door: WorkerProcess, body: bytes, by_worker: dict[str, dict[str, Any]],
                    timeout_s: float = 60.0) -> dict[str, dict[str, Any]]:
    """The door's answers for ``body`` once they equal the worker's own (its replicas lag the worker's writes by
    their round trip through the broker); fails with the last difference after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        status, answer = call(door, "/score", body)
        assert status == 200, answer
        by_door = {r["tx_id"]: r for r in answer["results"]}
        differences = [(tx_id, name) for tx_id, mine in by_worker.items() for name in MODEL_FEATURES
                       if by_door[tx_id]["features"][name] != pytest.approx(mine["features"][name], rel=1e-9,
                                                                             abs=1e-9)]
        differences += [(tx_id, "decision") for tx_id, mine in by_worker.items()
                        if by_door[tx_id]["decision"] != mine["decision"]]
        if not differences:
            return by_door
        assert time.monotonic() < deadline, f"the door still differs from the worker: {differences[:5]}"
        time.sleep(0.5)
