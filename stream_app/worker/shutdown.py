"""A bounded stop: once a worker is asked to stop, it is gone within a deadline, whatever hangs.

Faust's graceful stop waits for things that may never come: acknowledgements of messages whose
outputs failed, a producer flush or a group leave against a broker that went away. A stop that
overruns ``timeout_s`` ends the process from a thread (the event loop may be the thing that is stuck);
what was not acknowledged by then is read again by the next owner of its partition, exactly as
after a crash, which the delivery protocol already repairs (state before outputs, redelivery check).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable

import structlog

log = structlog.get_logger("stream_app.worker")


class StopDeadline:
    """Armed once (by a signal or a failure); fires ``exit(code())`` after ``timeout_s`` unless the
    process ended first. ``code`` is read when it fires, so a failure seen during the stop counts."""

    def __init__(self, timeout_s: float, code: Callable[[], int],
                 exit: Callable[[int], object] = os._exit) -> None:
        self.timeout_s = timeout_s
        self.code = code
        self._exit = exit
        self._timer: threading.Timer | None = None
        self._lock = threading.Lock()

    @property
    def armed(self) -> bool:
        return self._timer is not None

    def arm(self, why: str) -> None:
        with self._lock:
            if self._timer is not None:
                return
            log.info("worker.stopping", why=why, deadline_s=self.timeout_s)
            self._timer = threading.Timer(self.timeout_s, self._fire)
            self._timer.daemon = True  # never keeps a process alive that finished its stop in time
            self._timer.start()

    def cancel(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()

    def _fire(self) -> None:
        code = self.code()
        log.warning("worker.stop_deadline", deadline_s=self.timeout_s, exit_code=code,
                    effect="exiting without finishing the stop; unacknowledged input is read again")
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # closed or broken: nothing more to say there
                pass
        self._exit(code)
