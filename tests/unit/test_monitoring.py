"""The dashboard and scrape config only name metrics the worker exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from stream_app.worker.metrics import LATENCY_BUCKETS, Metrics, observe_many

ROOT = Path(__file__).parents[2] / "monitoring"


def exported_names() -> set[str]:
    names = set()
    for family in Metrics(CollectorRegistry()).registry.collect():
        names.add(family.name)
        names.update(s.name for s in family.samples)
        names.update({family.name + suffix for suffix in ("_total", "_bucket", "_count", "_sum", "_info")})
    return names


def test_dashboard_queries_name_exported_metrics() -> None:
    dashboard = json.loads((ROOT / "grafana" / "dashboards" / "stream_app.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\b(stream_app_[a-z_]+)", e)}
    assert used and used <= exported_names(), used - exported_names()
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_scrape_config_targets_metrics_path() -> None:
    text = (ROOT / "prometheus.yml").read_text()
    assert "metrics_path: /metrics" in text and ":6066" in text


def test_alerting_rules_are_loaded_by_the_config_and_name_exported_metrics() -> None:
    import yaml

    config = yaml.safe_load((ROOT / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"] and (ROOT / "alerts.yml").is_file()
    compose = yaml.safe_load((ROOT.parent / "docker-compose.yml").read_text())
    assert "./monitoring/alerts.yml:/etc/prometheus/alerts.yml:ro" in compose["services"]["prometheus"]["volumes"]
    rules = [r for g in yaml.safe_load((ROOT / "alerts.yml").read_text())["groups"] for r in g["rules"]]
    used = {name for r in rules for name in re.findall(r"\b(stream_app_[a-z_]+)", r["expr"])}
    assert used and used <= exported_names(), used - exported_names()
    assert {"stream_app_consumer_lag_messages", "stream_app_events_dead_lettered_total", "stream_app_ready",
            "stream_app_drift_detected", "stream_app_checkpoint_timestamp_seconds",
            "stream_app_label_to_model_lag_seconds"} <= used
    for rule in rules:
        assert rule["labels"]["severity"] in {"page", "ticket"} and rule["annotations"]["summary"], rule["alert"]



@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=200))
def test_observe_many_equals_observing_one_by_one(values: list[float]) -> None:
    def samples(h: Histogram) -> list[tuple[str, dict[str, str], float]]:
        return [(s.name, s.labels, s.value) for s in h.collect()[0].samples if s.name != "h_created"]

    one, many = (Histogram("h", "h", buckets=LATENCY_BUCKETS, registry=CollectorRegistry()) for _ in range(2))
    for v in values:
        one.observe(v)
    observe_many(many, values)
    assert [x[:2] for x in samples(one)] == [x[:2] for x in samples(many)]
    assert [x[2] for x in samples(one)] == pytest.approx([x[2] for x in samples(many)])
