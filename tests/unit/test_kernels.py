"""The compiled learning loops: a worker on a read-only file system still gets them."""

from __future__ import annotations

import numpy as np
import pytest
from numba import types
from numba.core import caching

from stream_app.compiled import compiled


def test_without_a_writable_cache_location_the_loop_is_compiled_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """numba refuses ``cache=True`` when no location is writable (no locator: what a read-only root file system
    without NUMBA_CACHE_DIR leaves); the kernel is then compiled without a cache instead of failing the import."""
    monkeypatch.setattr(caching.CacheImpl, "_locator_classes", [])  # as if no location were writable
    with pytest.raises(RuntimeError, match="no locator available"):  # numba's own refusal, as the fallback expects
        import numba
        numba.njit(types.float64(types.float64[:]), cache=True)(_total)

    kernel = compiled(types.float64(types.float64[:]))(_total)
    assert kernel(np.array([1.0, 2.5])) == 3.5
    assert kernel._cache.__class__.__name__ == "NullCache"  # noqa: SLF001


def _total(values: np.ndarray) -> float:
    out = 0.0
    for v in values:
        out += v
    return out
