"""A `stream-app worker` child process: started, awaited until ready, stopped without orphans.

Used by the demo and the integration tests, so both run the worker exactly as a user would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from stream_app.devtools.broker import free_port
from stream_app.devtools.children import die_with_parent

READY_TIMEOUT_S = 90.0


def topic_env(prefix: str, partitions: int) -> dict[str, str]:
    """Worker environment naming the run's own topics and consumer group."""
    return {
        "STREAM_APP_ID": prefix,
        "STREAM_APP_PARTITIONS": str(partitions),
        "STREAM_APP_TRANSACTIONS_TOPIC": f"{prefix}.transactions",
        "STREAM_APP_REKEYED_TOPIC": f"{prefix}.transactions.by-card",
        "STREAM_APP_DLQ_TOPIC": f"{prefix}.transactions.dlq",
        "STREAM_APP_SCORES_TOPIC": f"{prefix}.scores",
        "STREAM_APP_ALERTS_TOPIC": f"{prefix}.fraud-alerts",
        "STREAM_APP_LABELS_TOPIC": f"{prefix}.labels",
        "STREAM_APP_LABELS_REKEYED_TOPIC": f"{prefix}.labels.by-card",
        "STREAM_APP_LABELS_DLQ_TOPIC": f"{prefix}.labels.dlq",
        "STREAM_APP_EXAMPLES_TOPIC": f"{prefix}.river-examples",
        "STREAM_APP_RULES_TOPIC": f"{prefix}.rules",
        "STREAM_APP_RULES_AUDIT_TOPIC": f"{prefix}.rules.audit",
    }


class WorkerProcess:
    """``command``: ``worker``, or ``door`` (`stream-app door`, on the same web port variable's port)."""

    def __init__(self, bootstrap: str, workdir: Path, env: Mapping[str, str] | None = None,
                 args: Sequence[str] = (), command: str = "worker") -> None:
        self.bootstrap = bootstrap
        self.command = command
        self.web_port = free_port()
        # after `stream-app worker`, e.g. ["--faust-log-level", "info"]
        self.args = [*args, "--port", str(self.web_port)] if command == "door" else list(args)
        self.workdir = workdir
        self.env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=bootstrap,
                        STREAM_APP_DATA_DIR=str(workdir / "data"), STREAM_APP_WEB_PORT=str(self.web_port),
                        **(env or {}))
        self.log_path = workdir / f"{command}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "stream_app.cli", self.command, *self.args],
                                            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                            preexec_fn=die_with_parent)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S, after: int = 0) -> None:
        """Wait for the `worker.ready` log event (tables recovered, agents running), or `door.ready`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.log().count(f'"{self.command}.ready"') > after:
                return
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.command} exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            time.sleep(0.2)
        raise RuntimeError(f"{self.command} not ready after {timeout_s:.0f} s:\n{self.log()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)
