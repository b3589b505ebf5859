"""Micro-batches confirmed while the next one is worked on (the score and label agents).

A batch's confirmation (its records acknowledged by the broker, then its input messages acknowledged) runs as a
task; the agent goes on with the next batch until ``limit`` batches wait. faust commits only a consecutive run of
acknowledged offsets, so batches confirmed out of order are committed in order.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import cast


class InFlight:
    """Up to ``limit`` confirmations running; a failed one is reported through ``fail`` at once (and raises when
    its turn to be awaited comes, so the agent stops with nothing of it acknowledged)."""

    def __init__(self, limit: int, fail: Callable[[Exception], None]) -> None:
        self.limit = limit
        self.fail = fail
        self._running: deque[asyncio.Future[None]] = deque()

    async def add(self, confirmation: Awaitable[None]) -> None:
        """Start ``confirmation``; return once fewer than ``limit`` are running (the finished ones awaited)."""
        future = asyncio.ensure_future(confirmation)
        future.add_done_callback(self._check)
        self._running.append(future)
        while self._running and (len(self._running) >= self.limit or self._running[0].done()):
            await self._running.popleft()

    async def drain(self) -> None:
        """Wait for every running confirmation."""
        running, self._running = list(self._running), deque()
        await asyncio.gather(*running)

    def _check(self, future: asyncio.Future[None]) -> None:
        if not future.cancelled() and future.exception() is not None:
            self.fail(cast(Exception, future.exception()))
