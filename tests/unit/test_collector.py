"""The worker's garbage-collector settings: thresholds read from the environment, start-up frozen, pauses observed."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from stream_app.settings import Settings, parse_gc_thresholds
from stream_app.worker import collector
from stream_app.worker.metrics import Metrics


@pytest.fixture
def gc_restored() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.set_threshold(*thresholds)
    gc.unfreeze()


def test_thresholds_are_three_integers_or_pythons_own() -> None:
    assert parse_gc_thresholds("10000, 50,100") == (10000, 50, 100)
    assert parse_gc_thresholds("python") is None
    assert Settings.from_env({}).gc_threshold_values() == (700, 10, 100)
    for bad in ("", "700,10", "0,10,10", "7e3,10,10", "-1,10,10", "700,10,10,10", "default"):
        with pytest.raises(ValueError, match="STREAM_APP_GC_THRESHOLDS"):
            Settings.from_env({"STREAM_APP_GC_THRESHOLDS": bad} if bad else {}, gc_thresholds=bad)


def test_set_thresholds_applies_them_and_none_leaves_pythons(gc_restored: None) -> None:
    gc.set_threshold(700, 10, 10)
    collector.set_thresholds(None)
    assert gc.get_threshold() == (700, 10, 10)
    collector.set_thresholds((12345, 6, 7))
    assert gc.get_threshold() == (12345, 6, 7)


def test_freezing_start_up_takes_what_is_alive_out_of_every_collection(gc_restored: None) -> None:
    kept = [[i] for i in range(1000)]  # containers alive "at start-up"
    frozen = collector.freeze_startup()
    assert frozen >= len(kept)
    assert gc.get_freeze_count() == frozen
    assert not any(x is kept for x in gc.get_objects())  # a collection no longer walks them


def test_pauses_are_observed_by_generation() -> None:
    metrics = Metrics(CollectorRegistry())
    timer = collector.PauseTimer(metrics.gc_pause)
    timer.install()
    timer.install()  # once only
    try:
        gc.collect(0)
        gc.collect(2)
    finally:
        timer.remove()
    count = metrics.registry.get_sample_value
    assert count("stream_app_gc_pause_seconds_count", {"generation": "0"}) == 1
    assert count("stream_app_gc_pause_seconds_count", {"generation": "2"}) == 1
    gc.collect(2)  # removed: no longer observed
    assert count("stream_app_gc_pause_seconds_count", {"generation": "2"}) == 1
