"""Child processes that do not outlive their parent (broker, workers started by the demo and tests).

atexit does not run when the parent is killed (SIGKILL, or SIGTERM without a handler); Linux's
PR_SET_PDEATHSIG makes the kernel signal the child then. Children run in their own session, so a
terminal's Ctrl-C reaches only the parent, which stops them in order.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for ``subprocess.Popen``: SIGTERM this child when its parent dies (Linux only)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def alive(pid: int) -> bool:
    """The process ``pid`` exists (a zombie not yet reaped counts): what tests check after a stop."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
