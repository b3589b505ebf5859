"""numba's ``njit`` as the project uses it: explicit signatures, compiled when the module is imported.

A worker imports its compiled loops at start-up, so nothing is compiled while it takes over a partition. The
machine code is cached on disk when a cache location is writable: numba's own choice (``__pycache__`` beside the
source, or the user's cache directory), or ``NUMBA_CACHE_DIR`` (the image sets ``/tmp/numba-cache``, an ``emptyDir``
in the k8s pods, whose root file system is read-only). Without any writable location the loops are compiled in
memory at each start (about 1.5 s) instead of loaded (about 0.4 s).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba


def compiled(signature: Any) -> Callable[[Callable[..., Any]], Any]:
    """``numba.njit`` for ``signature``, cached on disk where numba finds a writable location, else in memory."""

    def decorate(function: Callable[..., Any]) -> Any:
        try:
            return numba.njit(signature, cache=True, nogil=True)(function)
        except RuntimeError:  # "cannot cache function ...: no locator available": a read-only file system
            return numba.njit(signature, nogil=True)(function)

    return decorate
