"""Faust worker for the table-recovery test, run as a subprocess by ``test_broker.py``.

A subprocess because a Faust worker owns its event loop, threads and signal handlers, and the
second instance must start from nothing but the changelog. Configured by environment:
``APP_ID``, ``BOOTSTRAP``, ``INPUT_TOPIC``, ``DATA_DIR``, ``RESULT_FILE``, ``EXPECTED`` (JSON of the
final value per key) and ``PHASE``:

* ``write``: apply input updates to the table; once it equals ``EXPECTED``, write ``RESULT_FILE``.
* ``recover``: as soon as table recovery completes, write the table and the number of events
  this instance applied (0 expected: the contents must come from the changelog alone).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import faust

from stream_app.kafka.transport import broker_url

ENV = os.environ
EXPECTED: dict[str, int] = json.loads(ENV["EXPECTED"])
RESULT_FILE = Path(ENV["RESULT_FILE"])

app = faust.App(
    ENV["APP_ID"],
    broker=broker_url(ENV["BOOTSTRAP"], fetch_verified_offsets=True),
    store="memory://",
    datadir=ENV["DATA_DIR"],
    web_enabled=False,
    web_bind="127.0.0.1",
    # Tansu holds a group join for half the session timeout and a rejoin after a graceful
    # leave for ~1.8x it: short timeouts keep both worker starts fast.
    broker_session_timeout=2,
    broker_heartbeat_interval=0.5,
    broker_commit_interval=0.2,
    # Batch changelog writes for sure: Tansu's ListOffsets is wrong only when the last batch
    # holds several records, and with the default linger (0) it sometimes held just one.
    producer_linger=0.1,
    topic_partitions=2,
    topic_disable_leader=True,
)
updates = app.topic(ENV["INPUT_TOPIC"], key_type=str, value_type=int, internal=False)
latest = app.Table("latest", default=int, partitions=2)
applied = 0


def write_result(payload: dict[str, Any]) -> None:
    """Write atomically so the test never reads a half-written file."""
    tmp = RESULT_FILE.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload))
    tmp.replace(RESULT_FILE)


@app.agent(updates)
async def apply_updates(stream: faust.StreamT[int]) -> None:
    global applied
    async for key, value in stream.items():
        latest[key] = value
        applied += 1
        if ENV["PHASE"] == "write" and dict(latest.items()) == EXPECTED:
            write_result({"applied": applied})


@app.task
async def report_recovered() -> None:
    if ENV["PHASE"] == "recover":
        await app.tables.recovery.completed.wait()
        write_result({"table": dict(latest.items()), "applied": applied})


if __name__ == "__main__":
    faust.Worker(app, loglevel="info").execute_from_commandline()
