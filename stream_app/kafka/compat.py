"""Every use of faust / mode / aiokafka / prometheus-client internals, in one place.

Each touch below is marked where it happens (``# noqa: SLF001`` where ruff's SLF rule sees it, ``touch N``
in a comment otherwise) and ``tests/unit/test_compat.py`` fails, naming what to re-check, when an upgraded
dependency changes what a touch relies on (digests of the upstream code, signatures, attributes). The
versions those checks were recorded against are pinned with ``==`` in pyproject.toml.

1. ``raw_producer``: faust's ``Producer._ensure_producer()`` (faust.transport.drivers.aiokafka) returns the
   aiokafka producer under faust's, so outputs and changelogs go out as partition batches
   (:mod:`stream_app.kafka.batch_send`) instead of one faust ``send`` (future + task) per record.
2. ``micro_batches``: reads the stream's iterator channel ``queue`` directly and does, per event, the
   bookkeeping faust's ``Stream._py_aiter`` does (``Consumer.track_message``, ``Monitor.stream_inbound_time``,
   and skipping messages of another ``consumer_generation_id`` or while flow control is suspended).
   Public attributes, internal behaviour: an upgrade that adds bookkeeping to ``_py_aiter`` must be mirrored.
3. ``Consumer._drain_messages``: a modified copy of faust's ``faust.transport.consumer.Consumer._drain_messages``
   (the base consumer's fetch loop), using its private state (``_read_offset``, ``_n_acked``,
   ``_commit_every``, ``_add_gap``, mode's ``Service._stopped``). An upstream change must be merged by hand.
4. ``Consumer.perform_seek``: stops the flow and clears ``Consumer._read_offset`` before faust's seek.
5. ``ConsumerThread._create_worker_consumer``: overrides faust's private factory of the aiokafka consumer to
   set ``AIOKafkaConsumer._fetch_max_wait_ms`` (faust hard-codes 1500 ms; aiokafka reads it in ``start()``)
   from the app attribute ``set_fetch_max_wait`` stores.
6. ``ConsumerThread._highwaters``: overrides faust's private highwater query used by table recovery.
7. ``Consumer._new_consumer_thread``: faust's private hook choosing the consumer thread class.
8. ``partition_for``: ``AIOKafkaProducer._partitioner``, the producer's partitioner, called as its
   ``_partition`` does, so a batched record lands where ``send`` would put it; aiokafka's default one is
   replaced by the domain's equal murmur2 (half its cost, a few µs per record).
9. ``topic_partitions``: ``AIOKafkaClient._wait_on_metadata(topic)``, the metadata wait behind ``send``.
10. ``store_dict``: ``table.data.data``, the plain dict of faust's in-memory store (skips faust's mapping
    layers, ~2 µs a key).
11. ``histogram_observe_many``: prometheus-client ``Histogram._upper_bounds``, ``_buckets`` (one
    non-cumulative count per bound) and ``_sum``: one pass per batch instead of a lock per bucket per value.
12. ``Worker._setup_logging`` / ``Worker._schedule_shutdown``: mode's private worker steps (logging set-up
    after the stdout redirect; the handler of SIGTERM/SIGINT), exposed as the public hooks
    ``on_logging_ready`` and ``on_shutdown_signal`` plus ``request_shutdown``.
13. ``tables_recovered``: ``app.tables.recovery.completed`` (not part of faust's ``TableManagerT``).
14. ``stop_waiting_for_acks``: flips ``app.conf.stream_wait_empty`` at run time; faust reads it when the
    consumer stops (``Consumer.on_stop``) and when the app stops its consumer (``App._consumer_wait_empty``).
15. ``Producer``: replaces the ``ProducerBuffer`` faust's ``Producer.__init__`` made with one whose ``size``
    is the length of its ``pending`` queue's private deque (``asyncio.Queue._queue``), which is what faust's
    ``size`` returns when ``producer_threaded`` is off.
16. ``changelog_topic``: the name faust gives a table's changelog topic (``Table._changelog_topic_name``), which
    ``stream-app door`` follows without a faust app.
"""

from __future__ import annotations

import asyncio
import signal
import time
import warnings
from collections.abc import AsyncIterator, Mapping, MutableMapping, Sequence
from typing import IO, Any, cast

import faust
import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from faust.exceptions import AlreadyConfiguredWarning
from faust.transport import consumer as faust_consumer
from faust.transport import producer as faust_producer
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types import TP
from faust.worker import Worker as FaustWorker
from prometheus_client import Histogram

from stream_app.domain.partitioner import card_partition, kafka_partition
from stream_app.kafka.transport import verified_highwaters

#: The app attribute ConsumerThread reads for the consumer's fetch wait (touch 5).
_FETCH_WAIT_ATTR = "fetch_max_wait_ms"


# --- 1, 2: the producer and the stream ---------------------------------------------------------------


def raw_producer(app: faust.App) -> AIOKafkaProducer:
    """The aiokafka producer under faust's (outputs and changelogs are sent as partition batches)."""
    return cast(AIOKafkaProducer, app.producer._ensure_producer())  # type: ignore[attr-defined]  # noqa: SLF001


async def micro_batches(stream: faust.StreamT[bytes], size: int,
                        within_s: float) -> AsyncIterator[list[faust.EventT[bytes]]]:
    """Micro-batches of up to ``size`` events straight from the topic's queue, unacknowledged (the caller
    acknowledges a batch once its outputs are confirmed; an interrupted batch is redelivered).

    faust's ``take``/``noack_take`` move each event through the stream's per-event iterator (sensors,
    processors, a passive-drainer task): measured at ~14 events per 5 ms window on a busy 2-core worker,
    so batches stayed tiny and their fixed costs dominated. Here a batch is the first event plus whatever
    the conductor has queued meanwhile, waiting at most ``within_s`` for more when fewer than ``size``
    are there; each message is tracked as faust's stream would (the rebalance waits for its ack), and each
    partition's inbound time is recorded as faust's stream would (its consumer logs "Stream has not
    started processing TP(...)" for a partition without one once stream_processing_timeout has passed)."""
    channel = cast(faust.ChannelT[bytes], aiter(stream.channel))  # registers the channel the conductor feeds
    queue = channel.queue
    app = stream.app
    flow = app.flow_control
    track = stream.app.consumer.track_message  # touch 2
    inbound = stream.app.monitor.stream_inbound_time  # touch 2
    loop = asyncio.get_running_loop()
    while True:
        try:
            events = [await queue.get()]
        except StopAsyncIteration:  # faust stops its channels' readers this way at shutdown
            return
        deadline = loop.time() + within_s
        while len(events) < size:
            if queue.empty():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    events.append(await asyncio.wait_for(queue.get(), remaining))
                except (TimeoutError, StopAsyncIteration):
                    break
            else:
                events.append(queue.get_nowait())
        # As faust's stream iterator: a message fetched before a rebalance (another generation) or while flow
        # is suspended for one belongs to whoever owns its partition now; it is redelivered there, never
        # processed here. Filtered and tracked with no await in between, so a revocation either waits for a
        # message's ack or never sees it processed.
        generation = app.consumer_generation_id
        live = flow.is_active()
        events = [e for e in events if live and e.message.generation_id == generation]
        if not events:
            continue
        now = time.monotonic()
        for event in events:
            track(event.message)
            inbound[event.message.tp] = now
        yield events


async def acknowledge(stream: faust.StreamT[bytes], events: list[faust.EventT[bytes]]) -> None:
    """Mark a micro-batch's messages safe to commit (faust commits a consecutive run of them)."""
    for event in events:
        await stream.ack(event)


# --- 3-7: the faust transport driver (URL scheme ``tansu://``, see stream_app.kafka.transport) -------


def set_fetch_max_wait(app: faust.App, wait_ms: int) -> None:
    """The fetch wait of the app's stream consumer (faust hard-codes 1500 ms: at low load every hop could
    wait that long); applied by :class:`ConsumerThread` when the app's broker URL is ``tansu://``."""
    setattr(app, _FETCH_WAIT_ATTR, int(wait_ms))


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """aiokafka consumer thread whose ``highwaters()`` (used by table recovery) are fetch-verified,
    and whose fetch wait is the one `set_fetch_max_wait` gave the app."""

    def _create_worker_consumer(self, transport: faust_aiokafka.Transport) -> AIOKafkaConsumer:  # touch 5
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads the attribute when the consumer starts, which happens after this.
        wait_ms = getattr(self.app, _FETCH_WAIT_ATTR, None)
        if wait_ms is not None:
            consumer._fetch_max_wait_ms = int(wait_ms)  # noqa: SLF001
        return consumer

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:  # touch 6
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
            **faust_aiokafka.credentials_to_aiokafka_auth(conf.broker_credentials, conf.ssl_context),
        )


class Consumer(faust_aiokafka.Consumer):
    """faust aiokafka consumer running :class:`ConsumerThread`, with a cheaper drain loop."""

    def _new_consumer_thread(self) -> ConsumerThread:  # touch 7
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def perform_seek(self) -> None:  # touch 4
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

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - runs inside every worker; touch 3
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
        fetcher_should_stop = fetcher._stopped.is_set  # noqa: SLF001 - as faust's loop does
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


class ProducerBuffer(faust_producer.ProducerBuffer):
    """faust's producer buffer (messages sent with ``send_soon``, e.g. a table's changelog) for an unthreaded
    producer. faust's ``size`` reads ``app.conf.producer_threaded`` through its settings registry first (~2 µs),
    and the consumer asks for the size twice per message it delivers: 3 % of a worker's CPU on the label path."""

    @property
    def size(self) -> int:
        return len(self.pending._queue)  # type: ignore[attr-defined]  # noqa: SLF001 - touch 15


class Producer(faust_aiokafka.Producer):
    """faust's aiokafka producer, with :class:`ProducerBuffer` when it is not threaded (faust's default)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.app.conf.producer_threaded:  # touch 15: the buffer faust made is not started yet
            self.buffer = ProducerBuffer(loop=self.loop, beacon=self.beacon)
            self.buffer.app = self.app


class Transport(faust_aiokafka.Transport):
    """faust aiokafka transport with fetch-verified highwaters (URL scheme ``tansu://``: faust finds it
    through this package's ``faust.transports`` entry point)."""

    Consumer = Consumer
    Producer = Producer


# --- 8-10: batches and tables --------------------------------------------------------------------------


def partition_for(producer: AIOKafkaProducer, key: bytes, partitions: list[int], *, card: bool = False) -> int:
    """The partition ``producer.send`` would choose for ``key`` among a topic's ``partitions`` (all
    counted as available, as faust's ``use_partitioner=True``). With aiokafka's default partitioner this is
    the domain's equal murmur2 at half the cost, cached for ``card`` keys (they come back); a topic of one
    partition (the examples log) needs no hash."""
    if len(partitions) == 1:
        return partitions[0]
    partitioner = producer._partitioner  # noqa: SLF001 - touch 8
    if isinstance(partitioner, DefaultPartitioner):
        return partitions[(card_partition if card else kafka_partition)(key, len(partitions))]
    return cast(int, partitioner(key, partitions, partitions))


async def topic_partitions(producer: AIOKafkaProducer, topic: str) -> set[int]:
    """A topic's partitions, waiting for the metadata as ``producer.send`` does."""
    return cast(set[int], await producer.client._wait_on_metadata(topic))  # noqa: SLF001 - touch 9


def changelog_topic(app_id: str, table: str) -> str:
    """The changelog topic faust writes the table ``table`` of the app ``app_id`` to (touch 16)."""
    return f"{app_id}-{table}-changelog"


def store_dict(table: Any) -> MutableMapping[bytes, bytes]:
    """The dict under a faust table with the in-memory store (reads skip faust's mapping layers, ~2 µs
    a key); other stores are used through their mapping interface."""
    store = table.data
    data = getattr(store, "data", None)  # touch 10
    return data if isinstance(data, dict) else cast(MutableMapping[bytes, bytes], store)


# --- 11: metrics ---------------------------------------------------------------------------------------


def histogram_observe_many(histogram: Histogram, values: Sequence[float]) -> None:
    """``histogram.observe(v)`` for every value, in one pass: per value, prometheus-client takes a lock
    per bucket and for the sum, which costs more than scoring the event."""
    if not len(values):
        return
    bounds = histogram._upper_bounds  # noqa: SLF001 - touch 11
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    for bucket, n in zip(histogram._buckets, counts.tolist(), strict=True):  # noqa: SLF001 - touch 11
        if n:
            bucket.inc(n)
    histogram._sum.inc(float(np.sum(values)))  # noqa: SLF001 - touch 11


# --- 12: the worker process ----------------------------------------------------------------------------


class Worker(FaustWorker):
    """faust's worker with two of mode's private steps turned into public hooks (touch 12)."""

    def on_logging_ready(self, stderr: IO[str]) -> None:
        """Called once mode has set up logging and redirected stdout/stderr (to the "mode.redirect"
        logger); ``stderr`` is the real one, from before the redirect."""

    def on_shutdown_signal(self, sig: signal.Signals) -> None:
        """Called when SIGTERM or SIGINT (Ctrl-C) asks the worker to stop, before the stop starts."""

    def request_shutdown(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop the worker as ``sig`` would (from inside the process)."""
        self._schedule_shutdown(sig)

    def _setup_logging(self) -> None:
        super()._setup_logging()
        self.on_logging_ready(self.stderr)

    def _schedule_shutdown(self, signal: signal.Signals) -> None:
        self.on_shutdown_signal(signal)
        super()._schedule_shutdown(signal)


# --- 13, 14: app state ---------------------------------------------------------------------------------


def tables_recovered(app: faust.App) -> bool:
    """Whether the app's tables have finished recovering from their changelogs."""
    recovery = getattr(app.tables, "recovery", None) if app.tables else None  # touch 13
    return bool(recovery is not None and recovery.completed.is_set())


def stop_waiting_for_acks(app: faust.App) -> None:
    """Make the coming stop skip waiting for unacknowledged messages (faust would wait forever for a
    batch that will never be acknowledged); what was acknowledged is still committed. The change is late on
    purpose (faust reads the setting when it stops), so faust's warning about late settings is silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", AlreadyConfiguredWarning)
        app.conf.stream_wait_empty = False  # touch 14
