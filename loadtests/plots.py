"""PNG plots of a load-test report, drawn from the report alone (so a saved JSON can be re-plotted)."""

from __future__ import annotations

from pathlib import Path

from loadtests.runner import LoadReport


def write_plots(report: LoadReport, out_dir: Path) -> list[Path]:
    """latency_over_time.png, percentile_curve.png and lag.png in ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on CI or servers
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"{report.profile['name']} profile, run {report.run_id}"
    paths = []

    fig, ax = plt.subplots(figsize=(9, 4.5))
    secs = [row["t"] for row in report.per_second]
    for key, style in (("p50", "-"), ("p99", "-"), ("max", ":")):
        ax.plot(secs, [row[key] for row in report.per_second], style, label=key)
    ax.set_yscale("log")
    ax.set_xlabel("intended send time (s since start)")
    ax.set_ylabel("latency (ms), intended send -> score consumed")
    ax.grid(True, which="both", alpha=0.3)
    rates = ax.twinx()
    rates.step(secs, [row["sent"] for row in report.per_second], where="post", color="grey", alpha=0.5,
               label="sent/s")
    rates.plot(secs, [row["target_rate"] for row in report.per_second], "--", color="grey", alpha=0.5,
               label="target/s")
    rates.set_ylabel("events/s")
    rates.set_ylim(bottom=0)
    lines, labels = ax.get_legend_handles_labels()
    more, more_labels = rates.get_legend_handles_labels()
    ax.legend(lines + more, labels + more_labels, loc="upper left", fontsize="small")
    ax.set_title(f"Latency per second of sending — {title}")
    paths.append(_save(fig, out_dir / "latency_over_time.png"))

    fig, ax = plt.subplots(figsize=(9, 4.5))
    curve = report.percentile_curve
    ax.plot([1 / (1 - p / 100) for p, _ in curve], [ms for _, ms in curve], "-", label="latency")
    if report.latency_ms.get("max") is not None:
        ax.axhline(report.latency_ms["max"], linestyle=":", color="red", label=f"max {report.latency_ms['max']:.1f} ms")
    ax.set_xscale("log")
    ticks = [p for p in (0.0, 50.0, 90.0, 99.0, 99.9, 99.99, 99.999) if 1 / (1 - p / 100) <= max(1, report.scored)]
    ax.set_xticks([1 / (1 - p / 100) for p in ticks], [f"{p:g}%" for p in ticks])
    ax.set_xlabel("percentile")
    ax.set_ylabel("latency (ms)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    ax.set_title(f"Latency by percentile (HDR) — {title}")
    paths.append(_save(fig, out_dir / "percentile_curve.png"))

    fig, ax = plt.subplots(figsize=(9, 4.5))
    ts = [s.t for s in report.lag]
    ax.plot(ts, [s.outstanding for s in report.lag], label="sent, not yet scored")
    if any(s.worker_lag is not None for s in report.lag):
        ax.plot(ts, [s.worker_lag for s in report.lag], label="worker consumer lag (/metrics)")
    ax.set_xlabel("time (s since start)")
    ax.set_ylabel("events")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
    ax.set_title(f"Consumer lag — {title}")
    paths.append(_save(fig, out_dir / "lag.png"))
    return paths


def _save(fig: object, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=100, bbox_inches="tight")  # type: ignore[attr-defined]
    plt.close(fig)  # type: ignore[arg-type]
    return path
