"""One bounded metadata request before a command uses Kafka.

Without it an unreachable broker shows up as forty lines of aiokafka traceback (`topics`, `generate`),
or as Faust retrying and logging forever (`worker`). A broker that goes away *later* is the running
worker's business (its broker watchdog), not this check's.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaConnectionError, KafkaError

from stream_app.startup import StartupError

BROKER_CHECK_TIMEOUT_S = 10.0


async def _bootstrap(bootstrap: str, timeout_s: float, client_kwargs: dict[str, Any]) -> None:
    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000),
                            **client_kwargs)
    try:
        await asyncio.wait_for(client.bootstrap(), timeout_s)
    finally:
        await client.close()


def check_broker(bootstrap: str, client_kwargs: dict[str, Any], timeout_s: float = BROKER_CHECK_TIMEOUT_S) -> None:
    """Fetch the cluster's metadata once within ``timeout_s``, or raise a one-line :class:`StartupError`."""
    quiet = logging.getLogger("aiokafka")  # its per-attempt error lines would repeat what the message says
    level = quiet.level
    quiet.setLevel(logging.CRITICAL + 1)
    try:
        asyncio.run(_bootstrap(bootstrap, timeout_s, client_kwargs))
    except (TimeoutError, KafkaError, OSError, ValueError) as exc:
        # aiokafka's own message lists resolved address tuples; what it hides (refused, unresolvable,
        # silent) is the same advice for the user.
        reason = (f"no answer within {timeout_s:.0f} s" if isinstance(exc, asyncio.TimeoutError)
                  else "no broker answered" if isinstance(exc, KafkaConnectionError)
                  else f"{type(exc).__name__}: {exc}")
        protocol = client_kwargs.get("security_protocol", "PLAINTEXT")
        raise StartupError(
            f"cannot reach the Kafka broker at {bootstrap} (KAFKA_BOOTSTRAP_SERVERS): {reason}; check that the "
            f"broker runs and that host, port and KAFKA_SECURITY_PROTOCOL={protocol} match its "
            "listener", exit_code=1) from None
    finally:
        quiet.setLevel(level)
