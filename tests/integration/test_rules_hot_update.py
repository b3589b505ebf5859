"""A rule set published while the worker runs changes its decisions: `stream-app rules publish` on the real broker,
the real worker follows the compacted rules topic; a bad set is refused and the old one keeps serving."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from outputs import PARTITIONS, produce, read_until, scrape

from stream_app.devtools.worker_process import WorkerProcess
from stream_app.domain.events import Transaction
from stream_app.domain.rules import Published
from stream_app.settings import Settings

MERCHANT = "m_blocked_1"
BLOCK = """
lists:
  blocked_merchants: [m_blocked_1]
rules:
  - id: merchant-blocklist
    when: merchant_id in blocked_merchants
    action: decline
    reason: merchant on the blocklist
"""
SHADOW = BLOCK.replace("reason: merchant on the blocklist", "reason: merchant on the blocklist\n    mode: shadow")


def models(w: WorkerProcess) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{w.web_port}/models", timeout=10) as response:
        return dict(orjson.loads(response.read()))


def wait_for(check: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    """Poll until ``check()``; the deadline only keeps a broken run from hanging (nothing is asserted on time)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def transactions(prefix: str, n: int, start_ms: int) -> list[Transaction]:
    return [Transaction(f"{prefix}-{i}", f"card_{prefix}_{i}", MERCHANT, 25.0, "EUR", start_ms + i * 1000, "FR", "pos",
                        "5411") for i in range(n)]


def scores_of(bootstrap: str, s: Settings, txs: list[Transaction]) -> dict[str, dict[str, Any]]:
    ids = {tx.tx_id for tx in txs}
    asyncio.run(produce(bootstrap, s.transactions_topic, [(tx.card_id.encode(), tx.to_bytes()) for tx in txs]))
    out = asyncio.run(read_until(bootstrap, [s.scores_topic], PARTITIONS,
                                 lambda o: ids <= {r["tx_id"] for r in o.of(s.scores_topic)}, 120))
    return {r["tx_id"]: r for r in out.of(s.scores_topic) if r["tx_id"] in ids}


def publish(env: dict[str, str], path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "stream_app.cli", "rules", "publish", str(path), "--author", "tester",
                           "--comment", "test"], capture_output=True, text=True, timeout=120, env=env)


def test_a_rule_published_while_the_worker_runs_changes_its_decisions(
        kafka_bootstrap: str, app_env: dict[str, str], worker: WorkerProcess, tmp_path: Path) -> None:
    s = Settings.from_env({**app_env, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap})
    env = {**os.environ, **app_env, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    start = 1_767_225_600_000
    before = scores_of(kafka_bootstrap, s, transactions("before", 5, start))
    assert all("rules" not in r for r in before.values())  # no rule set yet: the models decide alone
    assert models(worker)["rules"]["serving"] is None
    assert '"rules.ready"' in worker.log() and '"rules.not_caught_up"' not in worker.log()

    block = tmp_path / "block.yaml"
    block.write_text(BLOCK)
    proc = publish(env, block)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "RESULT version=1 rules=1" in proc.stdout
    wait_for(lambda: (models(worker)["rules"]["serving"] or {}).get("version") == "1", "rule set 1 applied")
    assert scrape(worker.web_port)[("stream_app_rules_version", ())] == 1.0

    blocked = scores_of(kafka_bootstrap, s, transactions("blocked", 5, start + 3_600_000))
    for record in blocked.values():
        assert record["decision"] == "decline", record
        assert record["rules"]["decided_by"] == "merchant-blocklist" and record["rules"]["version"] == "1"
        assert record["rules"]["hits"] == [{"id": "merchant-blocklist", "action": "decline", "mode": "enforce",
                                            "reason": "merchant on the blocklist"}]
    alerts = asyncio.run(read_until(kafka_bootstrap, [s.alerts_topic], PARTITIONS,
                                    lambda o: set(blocked) <= {r["tx_id"] for r in o.of(s.alerts_topic)}, 60))
    by_tx = {r["tx_id"]: r for r in alerts.of(s.alerts_topic)}
    assert all(by_tx[t]["rules"]["decided_by"] == "merchant-blocklist" for t in blocked)

    # A bad set on the topic is refused: the worker says so, and version 1 keeps serving.
    bad = Published(2, {"rules": [{"id": "x", "when": "amout_eur > 1", "action": "decline"}]}, "mallory", start)
    asyncio.run(produce(kafka_bootstrap, s.rules_topic, [(b"rules", bad.to_bytes())]))
    wait_for(lambda: models(worker)["rules"]["changes"][-1]["version"] == "2", "bad set read")
    change = models(worker)["rules"]["changes"][-1]
    assert change["ok"] is False and "amout_eur" in change["error"] and change["published_by"] == "mallory"
    assert models(worker)["rules"]["serving"]["version"] == "1"
    assert scrape(worker.web_port)[("stream_app_rules_updates_total", (("outcome", "refused"),))] == 1.0
    assert '"rules.refused"' in worker.log()
    still = scores_of(kafka_bootstrap, s, transactions("still", 3, start + 7_200_000))
    assert all(r["rules"]["decided_by"] == "merchant-blocklist" for r in still.values())

    # The same rule in shadow: recorded, not enforced.
    shadow = tmp_path / "shadow.yaml"
    shadow.write_text(SHADOW)
    proc = publish(env, shadow)
    assert proc.returncode == 0 and "RESULT version=3" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    wait_for(lambda: models(worker)["rules"]["serving"]["version"] == "3", "rule set 3 applied")
    shadowed = scores_of(kafka_bootstrap, s, transactions("shadow", 5, start + 10_800_000))
    for record in shadowed.values():
        assert record["rules"]["decided_by"] is None and record["decision"] == record["rules"]["model_decision"]
        assert record["rules"]["hits"][0]["mode"] == "shadow"

    # The audit trail: who, when and what, for both publications (the refused record was not published by the CLI).
    audit = asyncio.run(read_until(kafka_bootstrap, [s.rules_audit_topic], 1, lambda o: len(o.of(s.rules_audit_topic))
                                   >= 2, 30)).of(s.rules_audit_topic)
    assert [a["version"] for a in audit] == [1, 3]
    assert all(a["published_by"] == "tester" and a["published_at"] for a in audit)
    assert audit[0]["changes"]["rules_added"] == ["merchant-blocklist"]
    assert audit[1]["changes"]["rules_changed"] == ["merchant-blocklist"] and audit[1]["previous_version"] == 1

    # A worker that starts now reads the topic from the beginning before its first batch: its first events are
    # scored with the set in force (the latest valid one), not without rules.
    worker.stop()
    restarted = WorkerProcess(kafka_bootstrap, tmp_path / "restarted", app_env).start()
    try:
        restarted.wait_ready()
        first = scores_of(kafka_bootstrap, s, transactions("restarted", 3, start + 14_400_000))
        assert all(r["rules"]["version"] == "3" and r["rules"]["hits"][0]["mode"] == "shadow" for r in first.values())
        assert [c["ok"] for c in models(restarted)["rules"]["changes"]] == [True, False, True]
    finally:
        restarted.stop()
