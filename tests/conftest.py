"""Every test starts from structlog's defaults: a test (or a CLI run in-process) that configures logging
must not leave a level filter or a cached logger bound to a closed stream for the next one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()
