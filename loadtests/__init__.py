"""Open-loop load generator for stream_app: publishes transactions on a clock-driven schedule and
measures, per event, the time from its intended send time to its score record being consumed.

Library use (the CLI in ``loadtests.run`` is a thin wrapper around this)::

    report = await run_load(RateProfile.fixed(500, 10), "127.0.0.1:9092", Topics(), ledger=Path("l.jsonl"))
    Path("report.json").write_text(report.to_json())
"""

from loadtests.histogram import LatencyHistogram
from loadtests.profiles import RateProfile
from loadtests.runner import LoadOptions, LoadReport, Topics, run_load

__all__ = ["LatencyHistogram", "LoadOptions", "LoadReport", "RateProfile", "Topics", "run_load"]
