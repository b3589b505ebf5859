"""Every test starts from a fresh structlog configuration writing to whatever stderr is at write time: a test
(or a CLI run in-process) that configures logging must not leave a level filter or a logger bound to a
closed capture stream for the next one (structlog's built-in default is bound to stdout at import)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

from stream_app.worker.logs import CurrentStderr


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    structlog.reset_defaults()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(CurrentStderr()))  # type: ignore[arg-type]
    yield
    structlog.reset_defaults()
