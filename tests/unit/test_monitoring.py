"""The dashboard and scrape config only name metrics the worker exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from stream_app.metrics import Metrics

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
