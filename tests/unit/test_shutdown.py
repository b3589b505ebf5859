"""StopDeadline: a stop that overruns its deadline ends the process with the code of that moment."""

from __future__ import annotations

import threading
import time

from stream_app.worker.shutdown import StopDeadline


def test_fires_once_with_the_code_read_when_it_fires() -> None:
    exits: list[int] = []
    fired = threading.Event()
    failure = {"code": 0}

    def exit_(code: int) -> None:
        exits.append(code)
        fired.set()

    deadline = StopDeadline(0.2, lambda: failure["code"], exit=exit_)
    t0 = time.monotonic()
    deadline.arm("SIGTERM")
    deadline.arm("SIGINT")  # a second signal does not restart the clock
    failure["code"] = 70  # a write failed during the stop
    assert fired.wait(5)
    assert exits == [70] and 0.15 <= time.monotonic() - t0 < 3


def test_a_stop_that_finished_in_time_is_not_cut() -> None:
    exits: list[int] = []
    deadline = StopDeadline(0.2, lambda: 0, exit=exits.append)
    assert not deadline.armed
    deadline.arm("SIGTERM")
    assert deadline.armed
    deadline.cancel()
    time.sleep(0.4)
    assert exits == []
