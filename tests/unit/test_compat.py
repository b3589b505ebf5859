"""Upgrade guards of stream_app/kafka/compat.py: each test fails when an upgraded dependency changes what one
of its numbered touches relies on, and says which touch to re-check.

The recorded digests and signatures belong to the versions pinned (``==``) in pyproject.toml; the first test
checks those are the installed ones. After re-checking a touch against a new version, record the new digest.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import inspect
import signal
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path
from typing import Any

import faust
import mode.worker
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from faust.transport.drivers import aiokafka as faust_aiokafka
from prometheus_client import CollectorRegistry, Histogram

from stream_app.domain.partitioner import kafka_partition
from stream_app.kafka import compat

ROOT = Path(__file__).resolve().parents[2]
GUARDED = ("faust-streaming", "mode-streaming", "aiokafka", "prometheus-client", "river")

#: upstream code -> (touch number in compat.py, what to re-check, sha256 of its source at the pinned version)
UPSTREAM: dict[str, tuple[int, str, str]] = {
    "faust.transport.drivers.aiokafka:Producer._ensure_producer": (
        1, "it still returns the aiokafka producer faust sends through",
        "5592a4bbdf2513253f98233a4eac931ded2a531a86f269cddcc33bc3f5827db5"),
    "faust.streams:Stream._py_aiter": (
        2, "micro_batches does the per-event bookkeeping faust's stream iterator does (tracking, inbound time, "
           "skipping stale generations)",
        "3a48ee257a65435b482d51edb74f2993a67867949b1ef89b49fea893769e0614"),
    "faust.channels:Channel.__anext__": (
        2, "an iterator channel still yields events from its `queue`",
        "f69e22c24fc8285239c2e2d607c68637b1d21cc39316451c23f28fde13e6c571"),
    "faust.transport.consumer:Consumer.track_message": (
        2, "tracking a message still marks it pending ack for the rebalance/shutdown wait",
        "217d7f1399a4cd8e15a43a64ecf50413b9b738058e5433e057f0dc3927a3fc03"),
    "faust.transport.consumer:Consumer._drain_messages": (
        3, "merge the upstream change into compat.Consumer._drain_messages (a modified copy of this)",
        "44a2500309e83c630493f6828af50166ec8d96a0b3e4fb2bab735f704ae93417"),
    "faust.transport.consumer:Consumer.perform_seek": (
        4, "compat.Consumer.perform_seek still only needs the flow stopped and _read_offset cleared first",
        "0e8c130ff4b0afd82c0be9c5fd831316e10febc62c94032833911096e156d7c6"),
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._create_worker_consumer": (
        5, "it still returns an unstarted AIOKafkaConsumer with a hard-coded fetch_max_wait_ms",
        "c2701bfc3e6f6cad95c2be36d6a255a86e2c57d18d36cc1082b5fb5c482d99d7"),
    "aiokafka.consumer.consumer:AIOKafkaConsumer.start": (
        5, "start() still hands self._fetch_max_wait_ms to its Fetcher",
        "2f1ba70443327538800d348e61042cdedd5a5e6306f40ebe1a06dddba7494c45"),
    "faust.transport.drivers.aiokafka:AIOKafkaConsumerThread._highwaters": (
        6, "table recovery still reads highwaters from end_offsets (what the fetch-verified override corrects)",
        "a7f4f97d9f32aca2777713e22671d70eae4b3ae51541bb09a90448ce83acefce"),
    "faust.transport.drivers.aiokafka:Consumer._new_consumer_thread": (
        7, "the consumer still builds its thread through this hook",
        "0870ec53dea75083995e3565c0f0a25a1c63ecceaeb238e92e2585e3623af5a9"),
    "aiokafka.producer.producer:AIOKafkaProducer._partition": (
        8, "send still partitions with self._partitioner(key, all_partitions, available)",
        "e45fa9c539d431d1a8af1efb94604c35e9108132a28f6a1e5b03977a0c67beaa"),
    "aiokafka.client:AIOKafkaClient._wait_on_metadata": (
        9, "it still waits for a topic's metadata and returns its partition ids",
        "52b0a5ee78ef3aa0c21c82b69baa20eb6983d9e5871e9e66784198cb2f1bf256"),
    "faust.stores.memory:Store.__init__": (
        10, "the in-memory store still keeps its items in a plain dict `data`",
        "d1705e3cfe39e787b55289f9781ca7f7097aed20659b183f091e75e3c2f33f43"),
    "prometheus_client.metrics:Histogram.observe": (
        11, "observe still adds 1 to the first bucket whose bound >= value, and the value to _sum",
        "38beca3be1d1595b61a274180f55537000e15133ead54fa07e303a86d9ceca39"),
    "prometheus_client.metrics:Histogram._prepare_buckets": (
        11, "buckets are still one non-cumulative value per upper bound (_upper_bounds, _buckets, _sum)",
        "e857c68ce98710d98e1d4621b7b9ca0b29d149cb519eb5d189d76a5f0ce5e800"),
    "mode.worker:Worker._setup_logging": (
        12, "on_logging_ready still runs after mode's logging set-up and stdout redirect",
        "5b69bd16b1eff67e9926101f52b1bf15be62ba385053317de817e935a3af668c"),
    "mode.worker:Worker._schedule_shutdown": (
        12, "SIGTERM/SIGINT still reach _schedule_shutdown, which starts the stop",
        "1a6a5dfc88c2298b7ddc84be024a4344a54eaca8ba3a2d39e0447fa5b3905aa4"),
    "faust.tables.manager:TableManager.recovery": (
        13, "recovery.completed still says the tables are recovered",
        "f0bf5de78b4c3d235c3554010480f407010ccb7c481c68852a985542b952df32"),
    "faust.transport.consumer:Consumer.on_stop": (
        14, "the consumer's stop still skips waiting for acks when conf.stream_wait_empty is False",
        "45b1d2210ce2b526339856969472683f8bcc1b1d04c8dc1fb2315b4eb7fbd5e3"),
    "faust.app.base:App._consumer_wait_empty": (
        14, "the app's stop still skips waiting for acks when conf.stream_wait_empty is False",
        "6bc313c48c064b1626be9fb38fcc8760ec731ac15305bf42a038742b9b7ad4be"),
    "faust.transport.producer:ProducerBuffer.size": (
        15, "an unthreaded buffer's size is still len(self.pending._queue)",
        "b543a978fdece62e7d7c434eea6e842995d67cc1d3288434f5f26ad72c10a779"),
    "faust.transport.producer:Producer.__init__": (
        15, "the producer still makes its buffer in __init__ and only gives it `app` (and a threaded producer)",
        "5c53a4b47aa1372b61ca07edc6e413347436429210427634c9c2c22738e034d8"),
}

#: compat's overrides of private methods -> the upstream class whose method they replace (same signature).
OVERRIDES = [
    (compat.ConsumerThread, "_create_worker_consumer", faust_aiokafka.AIOKafkaConsumerThread),
    (compat.ConsumerThread, "_highwaters", faust_aiokafka.AIOKafkaConsumerThread),
    (compat.Consumer, "_new_consumer_thread", faust_aiokafka.Consumer),
    (compat.Consumer, "perform_seek", faust_aiokafka.Consumer),
    (compat.Consumer, "_drain_messages", faust_aiokafka.Consumer),
    (compat.Worker, "_setup_logging", mode.worker.Worker),
    (compat.Worker, "_schedule_shutdown", mode.worker.Worker),
]


def _upstream(target: str) -> Any:
    module, qualname = target.split(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = inspect.getattr_static(obj, part)
    return obj.fget if isinstance(obj, property) else obj


def _versions() -> str:
    return ", ".join(f"{name} {metadata.version(name)}" for name in GUARDED)


def test_installed_versions_are_the_pinned_ones() -> None:
    """The digests below were recorded against these pins: a different installed version invalidates them."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = dict(dep.split("==", 1) for dep in deps if "==" in dep)
    for name in GUARDED:
        assert name in pins, f"{name} must be pinned with == in pyproject.toml (compat.py's guards assume it)"
        assert metadata.version(name) == pins[name], (
            f"{name} {metadata.version(name)} installed, {pins[name]} pinned: reinstall the pin, or re-check the "
            f"touches of stream_app/kafka/compat.py against the new version and update the pin and the digests")


@pytest.mark.parametrize("target", sorted(UPSTREAM))
def test_upstream_code_is_the_recorded_one(target: str) -> None:
    touch, recheck, digest = UPSTREAM[target]
    source = inspect.getsource(_upstream(target))
    assert hashlib.sha256(source.encode()).hexdigest() == digest, (
        f"{target} changed upstream ({_versions()}): re-check touch {touch} of stream_app/kafka/compat.py "
        f"({recheck}), then record the new digest here")


@pytest.mark.parametrize(("ours", "name", "base"), OVERRIDES, ids=lambda x: getattr(x, "__name__", str(x)))
def test_overridden_private_methods_keep_their_signature(ours: type, name: str, base: type) -> None:
    assert name in vars(ours), f"{ours.__name__}.{name} is no longer an override: update this list"
    upstream = getattr(base, name, None)
    assert upstream is not None, f"{base.__module__}.{base.__qualname__}.{name} is gone: compat's override is dead"
    assert inspect.iscoroutinefunction(upstream) == inspect.iscoroutinefunction(getattr(ours, name))
    assert list(inspect.signature(upstream).parameters) == list(inspect.signature(getattr(ours, name)).parameters), (
        f"{base.__qualname__}.{name} changed its parameters: re-check {ours.__name__}.{name} in compat.py")


def test_tansu_scheme_resolves_through_the_entry_point_alone() -> None:
    """A fresh interpreter that never imports stream_app still gets compat's Transport for ``tansu://``."""
    code = ("import sys, faust\n"
            "app = faust.App('probe', broker='tansu://localhost:1')\n"
            "assert 'stream_app' not in sys.modules, 'the probe imported stream_app before resolving'\n"
            "cls = type(app.transport)\n"
            "print(cls.__module__ + ':' + cls.__qualname__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "stream_app.kafka.compat:Transport", (
        f"{out.stdout}{out.stderr}: the faust.transports entry point in pyproject.toml must name "
        "stream_app.kafka.compat:Transport (run `pip install --no-deps -e .` after changing it)")


def test_the_producer_buffer_is_compats_and_counts_as_fausts() -> None:
    """Touch 15: the worker's producer buffer reads its size directly, and the size is the one faust reads."""
    from faust.transport import producer as faust_producer

    async def probe() -> None:
        app = faust.App("probe-buffer", broker="tansu://localhost:1")
        buffer = app.producer.buffer
        assert isinstance(buffer, compat.ProducerBuffer) and buffer.app is app
        for n in range(3):
            assert buffer.size == faust_producer.ProducerBuffer.size.fget(buffer) == n
            buffer.pending.put_nowait(object())

    asyncio.run(probe())


def test_worker_consumer_gets_the_app_fetch_wait() -> None:
    asyncio.run(_worker_consumer_gets_the_app_fetch_wait())


async def _worker_consumer_gets_the_app_fetch_wait() -> None:
    """Touches 5 and 7: the app's consumer runs our thread, whose aiokafka consumer has our fetch wait."""
    app = faust.App("compat-test", broker="tansu://localhost:1")
    compat.set_fetch_max_wait(app, 123)
    thread = app.consumer._thread
    assert isinstance(app.consumer, compat.Consumer) and isinstance(thread, compat.ConsumerThread)
    consumer = thread._create_worker_consumer(app.transport)
    try:
        assert isinstance(consumer, AIOKafkaConsumer) and consumer._fetch_max_wait_ms == 123
    finally:
        await consumer.stop()


def test_consumer_keeps_the_private_state_the_copied_drain_loop_uses() -> None:
    """Touches 3 and 4: the attributes compat.Consumer reads exist on faust's consumer."""
    consumer = faust.App("compat-test", broker="tansu://localhost:1").consumer
    for name in ("_read_offset", "_n_acked", "_commit_every", "_stopped", "suspend_flow", "diag", "callback"):
        assert hasattr(consumer, name), f"faust's Consumer lost {name}: re-check touches 3-4 of compat.py"
    assert consumer._read_offset[faust.types.TP("t", 0)] is None  # a defaultdict(None)


def test_partition_for_is_the_producers_choice() -> None:
    asyncio.run(_partition_for_is_the_producers_choice())


async def _partition_for_is_the_producers_choice() -> None:
    """Touch 8: the producer's partitioner is Kafka's murmur2 one, called with (key, all, available); the
    shortcut for it (cached for card keys) chooses what it chooses, and another partitioner is called."""
    producer = AIOKafkaProducer(bootstrap_servers="localhost:1")
    keys = [f"card-{i}".encode() for i in range(200)] + [bytes(range(n)) for n in range(9)]
    own = [producer._partitioner(k, [0, 1, 2, 3, 4], [0, 1, 2, 3, 4]) for k in keys]
    assert [compat.partition_for(producer, k, [0, 1, 2, 3, 4]) for k in keys] == own
    assert [compat.partition_for(producer, k, [0, 1, 2, 3, 4], card=True) for k in keys] == own
    assert own == [kafka_partition(k, 5) for k in keys]
    some = [3, 7, 9]
    assert [compat.partition_for(producer, k, some) for k in keys] == [some[kafka_partition(k, 3)] for k in keys]
    await producer.stop()
    assert {compat.partition_for(producer, k, [5]) for k in keys} == {5}  # one partition: no hash
    custom = AIOKafkaProducer(bootstrap_servers="localhost:1", partitioner=lambda key, every, available: every[-1])
    assert {compat.partition_for(custom, k, [0, 1, 2], card=True) for k in keys} == {2}
    await custom.stop()
    assert inspect.iscoroutinefunction(producer.client._wait_on_metadata)  # touch 9
    assert list(inspect.signature(producer.client._wait_on_metadata).parameters) == ["topic"]


def test_store_dict_is_the_memory_stores_dict() -> None:
    """Touch 10: writes to the dict are the table's contents."""
    table = faust.App("compat-test", store="memory://").Table("cards", key_type=bytes, value_type=bytes)
    store = compat.store_dict(table)
    assert type(store) is dict, "faust's memory store no longer keeps a dict in .data: re-check touch 10"
    store[b"k"] = b"v"
    assert table.get(b"k") == b"v" and dict(table.items()) == {b"k": b"v"}


def test_histogram_observe_many_equals_observe() -> None:
    """Touch 11: the same samples as observing one value at a time (bounds, +Inf, below the first bound)."""
    values = [0.0, 0.1, 0.1000001, 0.5, 1.0, 7.0, 1e9, -3.0]
    one, many = (Histogram("h", "h", buckets=(0.1, 0.5, 1.0, 5.0), registry=CollectorRegistry()) for _ in range(2))
    for v in values:
        one.observe(v)
    compat.histogram_observe_many(many, values)
    compat.histogram_observe_many(many, [])
    samples = [[(s.name, s.labels, s.value) for s in h.collect()[0].samples if s.name != "h_created"]
               for h in (one, many)]
    assert samples[0] == samples[1]


def test_worker_hooks_run_around_modes_private_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Touch 12: the shutdown hook runs before mode's step, the logging hook after it."""
    calls: list[str] = []
    monkeypatch.setattr(mode.worker.Worker, "_schedule_shutdown", lambda self, sig: calls.append(f"mode:{sig.name}"))
    monkeypatch.setattr(mode.worker.Worker, "_setup_logging", lambda self: calls.append("mode:logging"))

    class Probe(compat.Worker):
        stderr = sys.stderr

        def on_shutdown_signal(self, sig: signal.Signals) -> None:
            calls.append(f"hook:{sig.name}")

        def on_logging_ready(self, stderr: Any) -> None:
            calls.append("hook:logging")

    worker = Probe.__new__(Probe)  # mode's __init__ is not what is tested here
    worker.request_shutdown()
    worker._setup_logging()
    assert calls == ["hook:SIGTERM", "mode:SIGTERM", "mode:logging", "hook:logging"]


def test_app_state_helpers() -> None:
    """Touches 13 and 14 on a real (unstarted) app."""
    app = faust.App("compat-test", broker="tansu://localhost:1")
    app.Table("cards", key_type=bytes, value_type=bytes)
    assert not compat.tables_recovered(app)
    app.tables.recovery.completed.set()  # type: ignore[attr-defined]
    assert compat.tables_recovered(app)
    assert app.conf.stream_wait_empty is True
    compat.stop_waiting_for_acks(app)
    assert app.conf.stream_wait_empty is False


def test_micro_batches_reads_public_names_of_faust_objects() -> None:
    """Touch 2: the attributes micro_batches reads exist where it reads them."""
    app = faust.App("compat-test", broker="tansu://localhost:1")
    channel = aiter(app.channel())
    assert isinstance(channel.queue, asyncio.Queue) or hasattr(channel.queue, "get_nowait")
    assert callable(app.consumer.track_message)
    assert isinstance(app.monitor.stream_inbound_time, dict)


def test_micro_batches_skip_messages_fetched_for_another_generation() -> None:
    """As faust's stream iterator: after a rebalance, messages fetched under the previous generation belong to
    the partition's new owner (redelivered there); processing them here scored events twice in the chaos run."""
    from faust.types import Message

    app = faust.App("compat-generation", broker="tansu://localhost:1")
    stream = app.stream(app.channel())
    app.consumer_generation_id = 7
    app.flow_control.resume()

    def event(offset: int, generation: int) -> faust.Event:
        message = Message("t", 0, offset, 0.0, 0, {}, b"k", b"v", None, generation_id=generation)
        return faust.Event(app, b"k", b"v", {}, message)

    async def first_batch() -> list[int]:
        batches = compat.micro_batches(stream, 10, 0.05)
        pending = asyncio.ensure_future(anext(batches))
        await asyncio.sleep(0)  # micro_batches registers the channel the conductor feeds
        queue = aiter(stream.channel).queue
        for offset, generation in ((1, 6), (2, 7), (3, 6), (4, 7)):
            queue.put_nowait(event(offset, generation))
        return [e.message.offset for e in await pending]

    assert asyncio.run(first_batch()) == [2, 4]


def test_changelog_topic_is_the_name_faust_gives_a_tables_changelog() -> None:
    """Touch 16: `stream-app door` follows the cards table's changelog by this name, without a faust app."""
    app = faust.App("compat-changelog", store="memory://")
    table = app.Table("cards", key_type=bytes, value_type=bytes)
    assert table.changelog_topic.get_topic_name() == compat.changelog_topic("compat-changelog", "cards"), \
        "faust names changelog topics otherwise now: re-check touch 16"
