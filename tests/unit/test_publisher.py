"""The publisher's pure parts: which event time a transaction is sent with, and the send schedule."""

from __future__ import annotations

import dataclasses
from itertools import islice

from stream_app.devtools.generator import GeneratorConfig, LabeledTx, simulate
from stream_app.devtools.publisher import TrafficPlan, due_transactions, stamped

NOW_MS = 1_796_000_000_123  # 2026-12-01, far from the generator's default origin (2026-01-01)


def _items(n: int = 20) -> list[LabeledTx]:
    return list(islice(simulate(GeneratorConfig(seed=3, n_customers=50, n_merchants=40)), n))


def test_wall_clock_plan_sends_the_wall_clock_as_event_time_and_nothing_else_changes() -> None:
    for item in _items():
        sent = stamped(item, TrafficPlan(wall_clock=True), 1.0, NOW_MS)
        assert sent.tx.ts_ms == NOW_MS
        assert sent.tx == dataclasses.replace(item.tx, ts_ms=NOW_MS)
        assert (sent.is_fraud, sent.pattern) == (item.is_fraud, item.pattern)


def test_simulated_plan_keeps_the_simulations_event_times() -> None:
    config = GeneratorConfig(seed=3, n_customers=50, n_merchants=40, start_ms=NOW_MS)
    items = list(islice(simulate(config), 200))
    sent = [stamped(i, TrafficPlan(), 5.0, NOW_MS + 5000) for i in items]
    assert sent == items
    assert items[0].tx.ts_ms >= NOW_MS  # a backfill (--start-time) starts where it was asked to
    assert items[-1].tx.ts_ms - items[0].tx.ts_ms > 3_600_000  # and runs faster than the clock


def test_drift_scenario_scales_amounts_only_from_its_second_on() -> None:
    plan = TrafficPlan(shift_after_s=8.0, shift_factor=3.0, wall_clock=True)
    for item in _items():
        assert stamped(item, plan, 7.9, NOW_MS).tx.amount == item.tx.amount
        assert stamped(item, plan, 8.0, NOW_MS).tx.amount == round(item.tx.amount * 3.0, 2)


def test_open_loop_schedule_follows_the_rate_and_stops_at_the_count() -> None:
    plan = TrafficPlan(rate=200.0)
    assert [due_transactions(t, plan) for t in (0.0, 0.004, 0.005, 1.0, 2.5)] == [1, 1, 2, 201, 501]
    capped = TrafficPlan(rate=200.0, count=300)
    assert due_transactions(10.0, capped) == 300
