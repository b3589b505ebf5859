"""`stream-app worker --processes N`: one worker process per core on a host.

A worker is one Python process: its scoring, learning and HTTP share one interpreter lock, so it uses one
core. N processes started here are N members of the consumer group (the input partitions are shared
between them, like workers on N machines), each with its own learner, checkpoints (``DATA_DIR/worker-i``)
and web port (``WEB_PORT + i``: health, metrics and ``/score`` per process). The parent only supervises:

* SIGTERM / SIGINT are passed to every child, which stops as a lone worker does (within
  ``STREAM_APP_SHUTDOWN_TIMEOUT_S``); a child still running after that and a margin is killed;
* a child that exits on its own is started again after a back-off (1 s, doubling to 30 s, reset by a
  minute of running), except for exit code 2 (configuration or start-up error: a restart would only
  repeat it), which stops every child and is the parent's exit code;
* the children die with the parent (PR_SET_PDEATHSIG) if it is killed.

More partitions than processes are needed for all of them to score: a group member without a partition
idles (``STREAM_APP_PARTITIONS``, 4 by default).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from stream_app.devtools.children import die_with_parent
from stream_app.settings import Settings

log = structlog.get_logger("stream_app.supervisor")
EXIT_CONFIG = 2  # the CLI's exit code for bad configuration and refused starts: not worth a restart
BACKOFF_MIN_S, BACKOFF_MAX_S, STABLE_AFTER_S = 1.0, 30.0, 60.0


def web_ports(settings: Settings, n: int) -> list[int]:
    """The children's web ports: consecutive from ``web_port``, or each its own free one (``web_port`` 0)."""
    return [settings.web_port + i if settings.web_port else 0 for i in range(n)]


def child_env(settings: Settings, index: int, environ: Mapping[str, str]) -> dict[str, str]:
    """Child ``index``'s environment: the parent's, with its own web port and data directory."""
    return {**environ, "STREAM_APP_WEB_PORT": str(web_ports(settings, index + 1)[index]),
            "STREAM_APP_DATA_DIR": str(Path(settings.data_dir) / f"worker-{index}")}


@dataclass
class Restarts:
    """When to start an exited child again (pure: the clock is passed in)."""

    delay_s: float = BACKOFF_MIN_S
    started_at: float = 0.0

    def started(self, now: float) -> None:
        self.started_at = now

    def after_exit(self, code: int, now: float) -> float | None:
        """Seconds to wait before the restart; None: do not restart (stop everything)."""
        if code == EXIT_CONFIG:
            return None
        if now - self.started_at >= STABLE_AFTER_S:
            self.delay_s = BACKOFF_MIN_S
        delay, self.delay_s = self.delay_s, min(BACKOFF_MAX_S, self.delay_s * 2)
        return delay


@dataclass
class Child:
    index: int
    argv: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    restarts: Restarts = field(default_factory=Restarts)
    due_at: float | None = 0.0  # when to (re)start it; None: running or stopped for good

    def start(self) -> None:
        Path(self.env["STREAM_APP_DATA_DIR"]).mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(self.argv, env=self.env, start_new_session=True, preexec_fn=die_with_parent)
        self.restarts.started(time.monotonic())
        self.due_at = None
        log.info("supervisor.child_started", index=self.index, pid=self.process.pid,
                 web_port=int(self.env["STREAM_APP_WEB_PORT"]))


def run_processes(settings: Settings, n: int, worker_args: Sequence[str]) -> int:
    """Run ``n`` worker processes until a signal (exit code 0 when every child stopped cleanly) or a
    child's configuration error (its exit code)."""
    argv = [sys.executable, "-m", "stream_app.cli", "worker", *worker_args]
    children = [Child(i, argv, child_env(settings, i, os.environ)) for i in range(n)]
    stopping: list[str] = []

    def on_signal(sig: int, _frame: object) -> None:
        stopping.append(signal.Signals(sig).name)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    log.info("supervisor.starting", processes=n, web_ports=web_ports(settings, n))
    code = 0
    while not stopping:
        now = time.monotonic()
        for child in children:
            if child.due_at is not None and now >= child.due_at:
                child.start()
            elif child.process is not None and child.due_at is None and child.process.poll() is not None:
                exit_code = child.process.returncode
                delay = child.restarts.after_exit(exit_code, now)
                log.warning("supervisor.child_exited", index=child.index, exit_code=exit_code,
                            restart_in_s=delay)
                if delay is None:
                    stopping.append(f"child {child.index} exited with {exit_code}")
                    code = exit_code
                    break
                child.due_at = now + delay
        time.sleep(0.2)
    log.info("supervisor.stopping", reason=stopping[0])
    return max(code, stop_all(children, settings.shutdown_timeout_s + 5.0))


def stop_all(children: Sequence[Child], timeout_s: float) -> int:
    """SIGTERM every running child, wait up to ``timeout_s``, SIGKILL what is left; the worst exit code."""
    running = [c.process for c in children if c.process is not None and c.process.poll() is None]
    for process in running:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    worst = 0
    for process in running:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("supervisor.child_killed", pid=process.pid, after_s=timeout_s)
            process.kill()
            process.wait()
        worst = max(worst, process.returncode if process.returncode > 0 else 0)
    return worst
