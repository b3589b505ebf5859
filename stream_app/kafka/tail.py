"""Follow one topic live for `stream-app tail`: every partition, as an observer that never disturbs the workers.

The consumer has no group (``group_id=None``): it joins nothing, triggers no rebalance and commits no
offset. "Only new records" is the high watermark of the first fetch of each partition, not the
ListOffsets answer alone: on the embedded broker (Tansu) ListOffsets(latest) answers the last
producer batch's base offset + 1 when a batch holds several records (see docs/notes/tansu.md), so the
consumer starts there and skips what lies below the high watermark the fetch reports. What each
message becomes on the screen is :mod:`stream_app.domain.tail`'s business; this module reads, prints
and says why it stopped.
"""

from __future__ import annotations

import asyncio
import difflib
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from stream_app.domain.pan import PanTokenizer
from stream_app.domain.tail import Filters, Message, card_filter, decode, json_line, line
from stream_app.kafka.security import client_kwargs
from stream_app.settings import Settings
from stream_app.startup import StartupError

#: How long the broker may take to answer the first look-ups (metadata, end offsets, first fetch).
ANSWER_TIMEOUT_S = 10.0
_POLL_MS = 200  # longest wait for records before the stop conditions are checked again


@dataclass(frozen=True, slots=True)
class TailOptions:
    """Where to start and when to stop besides a signal: after ``max_shown`` messages shown, after
    ``seconds``, or once every partition has been read up to its high watermark (``exit_at_end``)."""

    from_beginning: bool = False
    max_shown: int | None = None
    seconds: float | None = None
    exit_at_end: bool = False


@dataclass(frozen=True, slots=True)
class TailReport:
    read: int
    shown: int
    ended_by: str  # signal, max, seconds, end


def printer(settings: Settings, decisions: Sequence[str], cards: Sequence[str], reasons: Sequence[str], *,
            as_json: bool) -> Callable[[Message], bool]:
    """``show(message)``: prints the message's line (or JSON line) when it passes the filters, and says
    whether it did. A card number in ``cards`` is looked up by its token (:func:`card_filter`); a
    :class:`StartupError` when that needs the PAN key and it is not set."""
    try:
        pans = PanTokenizer.from_settings(settings)
        filters = Filters(frozenset(decisions), frozenset(card_filter(c, pans) for c in cards), frozenset(reasons))
    except ValueError as exc:
        raise StartupError(str(exc)) from None

    def show(message: Message) -> bool:
        view = decode(message, pans)
        if not filters.match(view):
            return False
        print(json_line(view) if as_json else line(view), flush=True)
        return True

    return show


async def tail_command(settings: Settings, topic: str, show: Callable[[Message], bool], options: TailOptions,
                       stop: asyncio.Event) -> int:
    """`stream-app tail`: :func:`follow` with a start and an end line on stderr; the exit code."""

    def ready(partitions: int) -> None:
        start = "from the beginning" if options.from_beginning else "new messages only"
        print(f"tailing {topic}: {partitions} partitions, {start}; Ctrl-C stops", file=sys.stderr, flush=True)

    try:
        report = await follow(settings.bootstrap_servers, topic, show, options, stop=stop, on_ready=ready,
                              client_kwargs=client_kwargs(settings))
    except BrokenPipeError:  # the reader went away (`| head`): done; stdout must not be flushed again at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ConnectionError, ValueError) as exc:
        print(f"stream-app tail: {exc}", file=sys.stderr)
        return 1
    print(f"stopped ({report.ended_by}): {report.shown} shown of {report.read} read", file=sys.stderr)
    return 0


async def follow(bootstrap: str, topic: str, show: Callable[[Message], bool], options: TailOptions, *,
                 stop: asyncio.Event, on_ready: Callable[[int], None],
                 client_kwargs: Mapping[str, Any] | None = None) -> TailReport:
    """Call ``show(message)`` for each message of every partition of ``topic`` (it answers whether the
    message was shown, which ``max_shown`` counts) until ``stop`` is set or ``options`` end the run.
    ``on_ready(partitions)`` is called once the start positions are known: messages published after
    it are shown. Raises ``ConnectionError`` when the broker does not answer, ``ValueError`` for an
    unknown topic. ``client_kwargs`` go to the consumer (``stream_app.kafka.security.client_kwargs``)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
                                auto_offset_reset="earliest", fetch_max_wait_ms=100,
                                request_timeout_ms=int(ANSWER_TIMEOUT_S * 1000), **dict(client_kwargs or {}))
    try:
        await consumer.start()
        topics = await consumer.topics()  # a metadata round trip, so that the partitions are known
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            close = difflib.get_close_matches(topic, sorted(topics), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"topic {topic!r} does not exist on {bootstrap}{hint}")
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        starts = ({tp: 0 for tp in tps} if options.from_beginning
                  else await asyncio.wait_for(consumer.end_offsets(tps), ANSWER_TIMEOUT_S))
        for tp, offset in starts.items():
            consumer.seek(tp, offset)
        return await _read(consumer, tps, dict(starts), show, options, stop, on_ready)
    except (KafkaError, TimeoutError) as exc:
        raise ConnectionError(f"cannot read {topic!r} from {bootstrap}: {exc!r}") from exc
    finally:
        await consumer.stop()


async def _read(consumer: AIOKafkaConsumer, tps: list[TopicPartition], position: dict[TopicPartition, int],
                show: Callable[[Message], bool], options: TailOptions, stop: asyncio.Event,
                on_ready: Callable[[int], None]) -> TailReport:
    # First offset shown per partition, known once a fetch of it has answered: the start, or (latest)
    # that fetch's high watermark when it is higher.
    shown_from: dict[TopicPartition, int] = {}
    ready = False
    began = time.monotonic()
    read = shown = 0
    while not stop.is_set():
        batches = await consumer.getmany(timeout_ms=_POLL_MS)
        for tp in tps:
            highwater = consumer.highwater(tp)
            if tp not in shown_from and highwater is not None:
                shown_from[tp] = position[tp] if options.from_beginning else max(position[tp], highwater)
        for tp, messages in batches.items():  # a partition with messages has answered a fetch
            for m in messages:
                position[tp] = m.offset + 1
                if m.offset < shown_from[tp]:
                    continue
                read += 1
                if show(Message(m.topic, m.partition, m.offset, m.timestamp, m.key, m.value)):
                    shown += 1
                    if options.max_shown is not None and shown >= options.max_shown:
                        return TailReport(read, shown, "max")
        if not ready:
            if len(shown_from) < len(tps):
                if time.monotonic() - began > ANSWER_TIMEOUT_S:
                    raise TimeoutError(f"no fetch answer within {ANSWER_TIMEOUT_S:.0f} s")
                continue
            ready = True
            on_ready(len(tps))
        if options.seconds is not None and time.monotonic() - began >= options.seconds:
            return TailReport(read, shown, "seconds")
        if options.exit_at_end and all(position[tp] >= (consumer.highwater(tp) or 0) for tp in tps):
            return TailReport(read, shown, "end")
    return TailReport(read, shown, "signal")
