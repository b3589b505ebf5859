"""stream_app's Faust transport: fetch-verified changelog highwaters, a lossless seek after a rebalance,
and a fetch loop without a task pair per message (see the methods' docstrings for each, with figures).

Why: Tansu 0.6.0 answers ListOffsets(latest) with the *last batch's base offset + 1* when that
batch holds several records (150 records in one batch -> end offset 1, while a Fetch reports
high watermark 150). Faust's table recovery reads each changelog partition up to
``consumer.highwaters()``, which aiokafka's driver takes from ``end_offsets`` (ListOffsets), so on
Tansu a rebuilt table silently loses its last updates. This driver keeps everything of
faust's aiokafka driver except the highwaters used by recovery, which it takes as the larger of
``end_offsets`` and the high watermark of a Fetch. On Apache Kafka both agree, so the result is
unchanged there; the cost is one short-lived consumer per recovery.

Select it with ``faust.App(broker=broker_url(bootstrap, fetch_verified_offsets=True))``:
importing this module registers the URL scheme ``tansu://`` in ``faust.transport.TRANSPORTS``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.transport import consumer as faust_consumer
from faust.transport import drivers
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP

SCHEME = "tansu"
_FETCH_WAIT_MS = 100


async def verified_highwaters(
    bootstrap: str,
    tps: Iterable[TP],
    *,
    timeout_s: float = 15.0,
    **client_kwargs: Any,
) -> dict[TP, int]:
    """Return each partition's end offset, corrected by a Fetch's high watermark.

    A consumer without group assigns the partitions, reads ``end_offsets`` (ListOffsets), seeks
    each partition to ``max(end - 1, 0)`` and fetches until every partition has reported a
    high watermark; the larger of the two values wins. ``client_kwargs`` go to
    :class:`aiokafka.AIOKafkaConsumer` (security settings, client id). Raises ``TimeoutError``
    after ``timeout_s``: an unconfirmed end offset would make table recovery lose data silently.
    """
    requested = list(tps)
    if not requested:
        return {}
    # aiokafka asserts its own TopicPartition type; results are keyed by the caller's objects.
    partitions = [TopicPartition(tp.topic, tp.partition) for tp in requested]
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=_FETCH_WAIT_MS,
        request_timeout_ms=int(timeout_s * 1000),
        **client_kwargs,
    )
    async with asyncio.timeout(timeout_s):
        await consumer.start()
        try:
            consumer.assign(partitions)
            ends = await consumer.end_offsets(partitions)
            for tp in partitions:
                consumer.seek(tp, max(ends[tp] - 1, 0))
            while any(consumer.highwater(tp) is None for tp in partitions):
                await consumer.getmany(*partitions, timeout_ms=_FETCH_WAIT_MS)
            return {
                key: max(ends[tp], consumer.highwater(tp))
                for key, tp in zip(requested, partitions)
            }
        finally:
            await consumer.stop()


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """aiokafka consumer thread whose ``highwaters()`` (used by table recovery) are fetch-verified,
    and whose fetch wait is the app's ``fetch_max_wait_ms`` attribute when it has one."""

    def _create_worker_consumer(self, transport: faust_aiokafka.Transport) -> AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # faust hard-codes fetch_max_wait_ms=1500: at low load every hop could wait that long.
        # aiokafka reads the attribute when the consumer starts, which happens after this.
        wait_ms = getattr(self.app, "fetch_max_wait_ms", None)
        if wait_ms is not None:
            consumer._fetch_max_wait_ms = int(wait_ms)
        return consumer

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        if self.consumer.in_transaction:
            # Transactional reads stop at the last stable offset, which comes from Fetch already.
            return await super()._highwaters(partitions)
        conf = self.app.conf
        transport = cast(Transport, self.transport)
        return await verified_highwaters(
            ",".join(faust_aiokafka.server_list(transport.url, transport.default_port)),
            partitions,
            timeout_s=conf.broker_request_timeout,
            client_id=conf.broker_client_id,
            **faust_aiokafka.credentials_to_aiokafka_auth(
                conf.broker_credentials, conf.ssl_context
            ),
        )


class Consumer(faust_aiokafka.Consumer):
    """faust aiokafka consumer running :class:`ConsumerThread`, with a cheaper drain loop."""

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def perform_seek(self) -> None:
        """Seek the assigned partitions to their committed offsets with the fetch flow stopped.

        After a rebalance faust resumes the stream partitions while the flow is already running (it
        was resumed to read the changelogs), only then seeks them to the committed offsets, and then
        clears the agents' queues (``flow_control.resume()``). Records fetched in that window were
        delivered: the ones still queued are dropped by the clear, while the fetcher goes on
        delivering the rest of its pre-seek batch, so the dropped offsets are never read again and
        the commit passes over them (faust fills a hole in the delivered offsets as if acknowledged,
        and lets one missing offset at the head of its acked list through). A read position the
        fetcher recorded after a revocation survives too and makes it drop the re-read records below
        it. Here the flow is stopped first (the pre-seek batch ends; callers resume the flow after
        clearing the queues) and every read position is forgotten, so each partition restarts
        exactly at its committed offset. Records of the window an agent already took are read
        again: at-least-once, recognised as duplicates by the card state. This was the chaos runs'
        lost events (traced: 1, 2 and 66 lost in three runs without it, 0 in three with it)."""
        self.stop_flow()
        self._read_offset.clear()
        await super().perform_seek()

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - runs inside every worker
        """faust's fetch loop, minus four futures and an ``asyncio.wait`` per message.

        faust hands every fetched message to the conductor through ``wait_first(callback(message),
        suspend_flow.wait())`` so that a rebalance can interrupt a delivery that blocks: that cost
        170 µs per message in a micro-benchmark on a loaded 2-core machine, against 0.3 µs for a plain
        ``await``, and was the largest single cost of a worker. The conductor's callback only
        blocks while stream flow control is suspended, the producer buffer is over its limit or a
        stream queue is full; when none holds the callback is awaited directly, otherwise faust's
        interruptible path is taken. Read offsets, gaps and ``commit_every`` are handled as in faust.
        """
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        flow_is_active = self.app.flow_control.is_active
        suspended = self.suspend_flow.is_set
        producer_buffer = self.app.producer.buffer
        yield_every, since_yield = 100, 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(faust_consumer.CONSUMER_FETCHING)
                ait = getmany(timeout=1.0)
                await self.sleep(0)
                if self.should_stop:
                    continue  # as faust: the loop ends once the stop flags are set
                async for tp, message in ait:
                    since_yield += 1
                    if since_yield > yield_every:
                        await asyncio.sleep(0)
                        since_yield = 0
                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is not None and offset < r_offset:
                        continue  # read already (faust drops these too)
                    if offset - (r_offset or 0) > 1 and r_offset and acks_enabled_for(message.topic):
                        await self._add_gap(tp, r_offset + 1, offset)
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    if flow_is_active() and not suspended() and producer_buffer.size <= producer_buffer.max_messages:
                        await callback(message)
                    else:
                        await self.wait_first(callback(message), self.suspend_flow.wait())
                    set_read_offset(tp, offset)
                self.diag.unset_flag(faust_consumer.CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                return
            raise
        finally:
            self.diag.unset_flag(faust_consumer.CONSUMER_FETCHING)


class Transport(faust_aiokafka.Transport):
    """faust aiokafka transport with fetch-verified highwaters (URL scheme ``tansu://``)."""

    Consumer = Consumer


def broker_url(bootstrap: str, *, fetch_verified_offsets: bool) -> str:
    """Faust ``broker=`` URL for a ``host:port[,host:port...]`` bootstrap string.

    ``fetch_verified_offsets=True`` selects :class:`Transport` (needed on Tansu, harmless on
    Apache Kafka); ``False`` selects faust's stock aiokafka driver (``kafka://``).
    """
    scheme = SCHEME if fetch_verified_offsets else "kafka"
    return ";".join(f"{scheme}://{host.strip()}" for host in bootstrap.split(","))


drivers.TRANSPORTS.aliases[SCHEME] = f"{__name__}:Transport"
