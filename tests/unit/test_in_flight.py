"""InFlight (stream_app/worker/in_flight.py): batches confirmed while the next ones are worked on."""

from __future__ import annotations

import asyncio

import pytest

from stream_app.worker.in_flight import InFlight


def test_add_returns_while_fewer_than_the_limit_are_confirming() -> None:
    async def scenario() -> list[str]:
        steps: list[str] = []
        gates = [asyncio.Event() for _ in range(3)]

        async def confirm(i: int) -> None:
            await gates[i].wait()
            steps.append(f"confirmed {i}")

        in_flight = InFlight(2, lambda exc: steps.append("failed"))
        await in_flight.add(confirm(0))
        steps.append("added 0")
        third = asyncio.ensure_future(_add_both(in_flight, confirm(1), confirm(2), steps))
        await asyncio.sleep(0.01)
        steps.append("gate 0")
        gates[0].set()
        await asyncio.sleep(0.01)
        gates[1].set()
        await third
        steps.append("gate 2")
        gates[2].set()
        await in_flight.drain()
        return steps

    steps = asyncio.run(scenario())
    # limit 2: one batch confirming while the agent works on the next; the second add waited for the first
    assert steps[:4] == ["added 0", "gate 0", "confirmed 0", "added 1"]
    assert steps[4:] == ["confirmed 1", "added 2", "gate 2", "confirmed 2"]  # drain waited for the last one


async def _add_both(in_flight: InFlight, first: object, second: object, steps: list[str]) -> None:
    await in_flight.add(first)  # type: ignore[arg-type]
    steps.append("added 1")
    await in_flight.add(second)  # type: ignore[arg-type]
    steps.append("added 2")


def test_a_failed_confirmation_is_reported_at_once_and_raises_when_awaited() -> None:
    async def scenario() -> list[Exception]:
        failed: list[Exception] = []

        async def broken() -> None:
            raise RuntimeError("broker refused")

        in_flight = InFlight(4, failed.append)
        await in_flight.add(broken())
        await asyncio.sleep(0.01)
        assert [str(e) for e in failed] == ["broker refused"]  # before anything awaits it
        with pytest.raises(RuntimeError, match="broker refused"):
            await in_flight.drain()
        return failed

    assert len(asyncio.run(scenario())) == 1
