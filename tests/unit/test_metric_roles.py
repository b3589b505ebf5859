"""Which metrics a worker and a door expose: each only what it keeps up to date."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from stream_app.worker.metrics import ONLY, ROLES, Metrics


def _names(role: str) -> set[str]:
    registry = CollectorRegistry()
    Metrics(registry, role)
    return {family.name for family in registry.collect()}


def test_each_process_exposes_the_shared_metrics_and_only_its_own() -> None:
    worker, door = _names("worker"), _names("door")
    assert {"stream_app_events_consumed", "stream_app_stage_seconds", "stream_app_labels"} <= worker - door
    assert door - worker == {"stream_app_card_replica_lag_seconds"}
    assert {"stream_app_score_requests", "stream_app_score_request_seconds", "stream_app_examples_applied",
            "stream_app_model", "stream_app_ready"} <= worker & door
    assert set(ONLY.values()) <= set(ROLES)


def test_an_unknown_role_is_refused() -> None:
    with pytest.raises(ValueError, match="role must be one of"):
        Metrics(CollectorRegistry(), "door ")
