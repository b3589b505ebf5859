"""A worker of this version restores the changelogs a worker of the previous stored format (v1) wrote.

The records in tests/unit/data/changelog_v1 were read from a real run of the baseline worker (see its
README.txt): card states carrying their delivery ledger under "unconfirmed", captured vectors and parked
labels. They are written into the changelog topics of a fresh app, a worker starts on them, and then:
the cards' features continue from the restored state (POST /score), and an event of a restored ledger
entry that is redelivered is recognised as a duplicate whose missing score is published again.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer
from outputs import PARTITIONS, produce, read_until

from stream_app.devtools.worker_process import WorkerProcess
from stream_app.domain.events import Transaction, format_ts
from stream_app.domain.features import DAY_MS, FEATURE_NAMES, featurize, tx_hash
from stream_app.kafka.topics import TopicSpec, ensure_topics
from stream_app.worker.delivery import decode_card

FIXTURES = Path(__file__).parents[1] / "unit" / "data" / "changelog_v1"
TABLES = {"cards": "cards.jsonl", "captured-features": "captured-features.jsonl",
          "parked-labels": "parked-labels.jsonl"}


def _records(name: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in (FIXTURES / name).read_text().splitlines() if line.strip()]


def _latest_cards(now_ms: int) -> dict[str, dict[str, Any]]:
    """Each card's last v1 record, its ledger entry stamped ``now_ms`` (as if the takeover were now:
    entries older than five minutes are plain duplicates by design)."""
    latest: dict[str, dict[str, Any]] = {}
    for r in _records(TABLES["cards"]):
        if r["value"] is not None:
            latest[r["key"]] = orjson.loads(r["value"])
    for state in latest.values():
        entry = state["unconfirmed"]
        entry["at"] = now_ms
        for tx_entry in entry["tx"].values():
            tx_entry[1][3] = now_ms
    return latest


async def _write_changelogs(bootstrap: str, app_id: str, cards: dict[str, dict[str, Any]]) -> None:
    await ensure_topics(bootstrap, [TopicSpec(f"{app_id}-{t}-changelog", PARTITIONS) for t in TABLES], timeout_s=20)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_batch_size=64)  # one record a batch
    await producer.start()
    try:
        for table, name in TABLES.items():
            for r in _records(name):
                value = r["value"]
                if table == "cards" and value is not None:
                    value = orjson.dumps(cards[r["key"]]).decode()  # the restamped v1 state
                await producer.send_and_wait(f"{app_id}-{table}-changelog", None if value is None else value.encode(),
                                             key=r["key"].encode("latin-1"), partition=r["partition"])
    finally:
        await producer.stop()


def _score(w: WorkerProcess, tx: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{w.web_port}/score", data=orjson.dumps(tx), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return orjson.loads(response.read())  # type: ignore[no-any-return]


def _log_events(w: WorkerProcess) -> list[dict[str, Any]]:
    events = []
    for line in w.log().splitlines():
        try:
            events.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    return [e for e in events if isinstance(e, dict)]


def test_a_worker_restores_and_repairs_from_v1_changelogs(kafka_bootstrap: str, app_env: dict[str, str],
                                                           tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    cards = _latest_cards(now)
    asyncio.run(_write_changelogs(kafka_bootstrap, app_env["STREAM_APP_ID"], cards))
    w = WorkerProcess(kafka_bootstrap, tmp_path / "worker", app_env).start()
    try:
        w.wait_ready()
        # 1. Features continue from the restored states (the ledger entry is not part of them).
        card_id, v1 = max(cards.items(), key=lambda kv: len(kv[1]["seen"]))
        state, entry = decode_card(orjson.dumps(v1))
        assert entry is not None and state.last_ts is not None and "unconfirmed" not in state.as_dict()
        tx = Transaction("upgrade-probe", card_id, "m_probe", 42.0, "EUR", state.last_ts + 3_600_000, "FR", "ecom",
                         "5411")
        expected = dict(zip(FEATURE_NAMES, featurize({card_id: state}, tx, 7 * DAY_MS), strict=True))
        answer = _score(w, {**tx.to_json_dict(), "timestamp": format_ts(tx.ts_ms)})
        assert answer["status"] == "scored" and answer["features"]["count_30d"] > 0
        assert {n: answer["features"][n] for n in FEATURE_NAMES} == expected  # the card's part of the vector
        # 2. A redelivered event of a restored ledger entry: a duplicate, its missing score published again.
        tx_id, (row, _source, _seq) = next(iter(entry["tx"].items()))
        ts = next(t for h, t in state.as_dict()["seen"] if h == tx_hash(tx_id))
        again = {"tx_id": tx_id, "card_id": card_id, "merchant_id": "m_any", "amount": row[0], "currency": "EUR",
                 "timestamp": format_ts(ts), "country": "FR", "channel": "pos", "mcc": "5411"}
        asyncio.run(produce(kafka_bootstrap, app_env["STREAM_APP_TRANSACTIONS_TOPIC"],
                            [(card_id.encode(), orjson.dumps(again))]))
        scores = app_env["STREAM_APP_SCORES_TOPIC"]
        out = asyncio.run(read_until(kafka_bootstrap, [scores], PARTITIONS,
                                     lambda o: any(r["tx_id"] == tx_id for r in o.of(scores)), 60))
        assert [r["tx_id"] for r in out.of(scores)] == [tx_id], w.log()[-3000:]
        checked = [e for e in _log_events(w) if e.get("event") == "redelivery.checked"]
        assert checked and checked[0]["scores_republished"] == 1, w.log()[-3000:]
    finally:
        w.stop()
