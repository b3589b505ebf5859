"""Every changelog record of the previous stored formats (tests/unit/data/changelog_v1, written by a real
run of the baseline worker) is read by this version: card states (v1 -> state + ledger entry, rewritten as v3), captured
vectors and parked labels (unchanged formats)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from stream_app.domain.features import DAY_MS
from stream_app.domain.learning import LEARNED, Captured, ParkedLabel
from stream_app.worker.delivery import decode_card, encode_card

DATA = Path(__file__).parent / "data" / "changelog_v1"


def _values(name: str) -> list[bytes]:
    rows: list[dict[str, Any]] = [orjson.loads(line) for line in (DATA / name).read_text().splitlines()]
    return [r["value"].encode() for r in rows if r["value"] is not None]


def test_v1_card_states_read_as_state_and_ledger_and_rewrite_as_v3() -> None:
    values = _values("cards.jsonl")
    assert len(values) >= 100
    for raw in values:
        state, entry = decode_card(raw)
        stored = orjson.loads(raw)
        del stored["unconfirmed"]
        assert state.as_dict() == stored  # every list, every float, every digest as it was
        assert entry is not None and entry["tx"] and all(len(e) == 3 for e in entry["tx"].values())
        rewritten = encode_card(state, entry)
        assert rewritten[:2] == b"C\x03" and decode_card(rewritten) == (state, entry)
        assert decode_card(orjson.dumps({"v": 2, "card": stored, "ledger": entry})) == (state, entry)
        assert state.last_ts is not None and state.first_ts is not None
        assert state.last_ts - state.first_ts < 30 * DAY_MS  # event times, as the features read them


def test_v1_captured_vectors_and_parked_labels_read_unchanged() -> None:
    captured = [Captured.from_bytes(v) for v in _values("captured-features.jsonl") if v != LEARNED]
    assert captured and all(len(c.features) == len(captured[0].features) and "risk" in c.scores for c in captured)
    parked = [ParkedLabel.from_bytes(v) for v in _values("parked-labels.jsonl")]
    assert parked and all(orjson.loads(p.raw)["tx_id"] for p in parked)
