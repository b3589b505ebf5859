"""History replayed as the stream saw it: transactions and their labels merged in label-arrival order.

Each transaction is featurized (its card's features, then :meth:`EntityTable.features`) from what was
known at its event time, and only then folded into the card state and the entity table. Its label is
folded into the entity table when it *arrives*: at the data's ``label_time`` when given, else
``label_delay_ms`` after the transaction. A label arriving at the same millisecond as a transaction
counts as known to it (the stream cannot promise the opposite order either). So no feature sees a label
from its future, here or in the stream (``tests/unit/test_replay.py`` checks it).
"""

from __future__ import annotations

import heapq
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from stream_app.devtools.generator import GeneratorConfig, simulate
from stream_app.domain.drift import is_warm
from stream_app.domain.entities import EntityTable, LabelArrival, featurize_model, model_feature_names, with_suspects
from stream_app.domain.events import InvalidEvent, Transaction
from stream_app.domain.features import DAY_MS, CardState


@dataclass(frozen=True)
class Dataset:
    x: np.ndarray  # float32 [n, the feature set's width]
    y: np.ndarray  # int8
    ts_ms: np.ndarray
    cards: np.ndarray
    warm: np.ndarray  # bool: the card's state had watched it for drift.WARM_DAYS (drift.is_warm)
    label_ms: np.ndarray  # when each row's label arrived (int64)


def arrival(tx: Transaction, is_fraud: bool, states: dict[str, CardState], table: EntityTable,
            arrived_ms: int) -> LabelArrival:
    """A label as the stream's label join sends it: with the transaction's entity ids and, for a fraud,
    the merchants the card paid at before it (from the card's state when the label arrives)."""
    entity = with_suspects({"card": tx.card_id, "ts": tx.ts_ms, "keys": table.keys(tx)}, is_fraud,
                           states.get(tx.card_id))
    assert entity is not None
    return LabelArrival.from_dict(entity, arrived_ms, is_fraud)


def replay(items: Iterable[tuple[Transaction, bool]], horizon_ms: int, label_delay_ms: int = 7 * DAY_MS,
           label_times: Sequence[int | None] | None = None, progress: bool = True,
           on_invalid: Callable[[int, InvalidEvent], None] | None = None,
           table: EntityTable | None = None) -> Dataset:
    """Featurize (transaction, is_fraud) pairs given in event-time order, labels folded in as they arrive.

    ``label_times[i]``: when item i's label became known (None: ``label_delay_ms`` after it). A transaction
    that ``featurize`` refuses (a duplicate tx_id, an event older than the card's horizon) is skipped and
    ``on_invalid(index, error)`` told; its label is never learned.
    """
    table = table if table is not None else EntityTable()
    states: dict[str, CardState] = {}
    rows: list[list[float]] = []
    labels: list[int] = []
    ts: list[int] = []
    cards: list[str] = []
    warm: list[bool] = []
    label_ms: list[int] = []
    pending: list[tuple[int, int, Transaction, bool]] = []  # (arrival, sequence, tx, is_fraud)
    started = time.monotonic()
    next_expiry = None
    for i, (tx, is_fraud) in enumerate(items):
        while pending and pending[0][0] <= tx.ts_ms:
            at, _, labelled, fraud = heapq.heappop(pending)
            table.learn(arrival(labelled, fraud, states, table, at))
        if next_expiry is None or tx.ts_ms >= next_expiry:  # daily, in event time, as the worker's replica
            table.expire()
            next_expiry = (tx.ts_ms // DAY_MS + 1) * DAY_MS
        try:
            rows.append(featurize_model(states, table, tx, horizon_ms))
        except InvalidEvent as exc:
            if on_invalid is not None:
                on_invalid(i, exc)
            continue
        given = None if label_times is None else label_times[i]
        at = max(tx.ts_ms, given if given is not None else tx.ts_ms + label_delay_ms)
        heapq.heappush(pending, (at, i, tx, is_fraud))
        labels.append(int(is_fraud))
        ts.append(tx.ts_ms)
        cards.append(tx.card_id)
        warm.append(is_warm(states[tx.card_id], tx.ts_ms))
        label_ms.append(at)
        if progress and i and i % 100_000 == 0:
            rate = i / (time.monotonic() - started)
            print(f"  featurized {i:,} transactions ({rate:,.0f}/s)", file=sys.stderr, flush=True)
    return Dataset(np.asarray(rows, dtype=np.float32).reshape(-1, len(model_feature_names(table.specs))),
                   np.asarray(labels, dtype=np.int8), np.asarray(ts, dtype=np.int64), np.asarray(cards),
                   np.asarray(warm, dtype=bool), np.asarray(label_ms, dtype=np.int64))


def build_dataset(config: GeneratorConfig, days: float, horizon_ms: int, progress: bool = True,
                  label_delay_ms: int = 7 * DAY_MS, table: EntityTable | None = None) -> Dataset:
    return replay(((item.tx, item.is_fraud) for item in simulate(config, days=days)), horizon_ms,
                  label_delay_ms, progress=progress, table=table)
