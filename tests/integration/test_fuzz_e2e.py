"""End-to-end fuzzing at CI size: 600 transaction and 600 label messages, bad and valid, of sizes from
0 bytes to twice a broker's message limit, through a running worker on the broker (full size:
``python -m stream_app.devtools.fuzz_e2e --n 20000``). Every message must be accounted for, nothing may carry a
card number out, and the worker must survive it all and stop on SIGTERM within 10 s."""

from __future__ import annotations

from pathlib import Path

from stream_app.devtools import fuzz_e2e

REASONS = {"invalid_json", "not_an_object", "missing_field", "wrong_type", "invalid_value", "message_too_large"}


def test_every_fuzzed_message_is_accounted_for(kafka_bootstrap: str, broker_is_tansu: bool, tmp_path: Path) -> None:
    report = fuzz_e2e.run(kafka_bootstrap, 600, tmp_path / "fuzz", seed=7)
    text = "\n".join([*report.lines(), report.result_line()])
    assert report.count("lost") == 0, text
    assert report.issues == [], text
    assert report.leaks == [], text
    assert report.alive and report.health, text
    assert 0 <= report.stop_s <= fuzz_e2e.STOP_LIMIT_S, text
    assert report.result_line().startswith("RESULT sent=1200 "), text

    # The run covered what it claims to: every outcome, the parser's reasons, sizes, keys, headers.
    for kind in ("transactions", "labels"):
        mine = [e for e in report.entries if e.kind == kind]
        assert {e.actual.split(":", 1)[-1] for e in mine} >= REASONS, text
        assert sum(e.actual == "duplicate" for e in mine) > 5, text
        assert any(e.key is None for e in mine) and any(e.headers > 100 for e in mine), text
        assert any(not e.direct and e.actual in {"scored", "joined"} for e in mine), text  # re-keyed by the worker
        beyond = [e for e in mine if e.size > fuzz_e2e.KAFKA_MESSAGE_MAX_BYTES]
        refused = [e for e in beyond if e.actual == "refused"]
        assert refused, text  # at least the one above what the fuzzer's producer takes
        if broker_is_tansu:  # no broker limit: everything else reaches the worker and is dead-lettered
            assert len(beyond) - len(refused) >= 3, text
            assert all(e.actual == "dead_lettered:message_too_large" for e in beyond if e not in refused), text
    assert report.count("scored") > 50 and report.count("joined") > 10, text
    assert report.count("dead_lettered:unknown_tx") > 0, text
