"""Every test starts from a fresh structlog configuration writing to whatever stderr is at write time: a test
(or a CLI run in-process) that configures logging must not leave a level filter or a logger bound to a
closed capture stream for the next one (structlog's built-in default is bound to stdout at import)."""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
import structlog


class _CurrentStderr:
    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    structlog.reset_defaults()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(_CurrentStderr()))  # type: ignore[arg-type]
    yield
    structlog.reset_defaults()
