"""Broker fixtures for integration tests: Apache Kafka when a Docker engine answers, else Tansu.

The fallback is an embedded broker, never a skip: integration tests must run on machines
without a Docker engine (CI here has none).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest
from outputs import PARTITIONS

from stream_app.devtools.broker import EmbeddedBroker
from stream_app.devtools.worker_process import WorkerProcess, topic_env
from stream_app.kafka.topics import TopicSpec, create_topics, ensure_topics
from stream_app.settings import Settings

HERE = Path(__file__).parent


@dataclass(frozen=True)
class KafkaUnderTest:
    """Where the session's broker listens and whether it is the embedded Tansu."""

    bootstrap: str
    is_tansu: bool


def _docker_engine_answers() -> bool:
    """Ping the engine the way testcontainers will reach it (docker SDK, DOCKER_HOST), quickly."""
    try:
        client = docker.from_env(timeout=3)
    except docker.errors.DockerException:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


@pytest.fixture(scope="session")
def kafka_under_test() -> Iterator[KafkaUnderTest]:
    if _docker_engine_answers():
        # testcontainers >= 4.15 location; ``testcontainers.kafka`` is a deprecated alias there.
        from testcontainers.community.kafka import KafkaContainer

        with KafkaContainer().with_kraft() as kafka:
            yield KafkaUnderTest(kafka.get_bootstrap_server(), is_tansu=False)
    else:
        with EmbeddedBroker() as broker:
            yield KafkaUnderTest(broker.bootstrap, is_tansu=True)


@pytest.fixture(scope="session")
def kafka_bootstrap(kafka_under_test: KafkaUnderTest) -> str:
    """``host:port`` of a Kafka-compatible broker shared by the session."""
    return kafka_under_test.bootstrap


@pytest.fixture(scope="session")
def broker_is_tansu(kafka_under_test: KafkaUnderTest) -> bool:
    """True when ``kafka_bootstrap`` is the embedded Tansu, whose known bugs tests may assert."""
    return kafka_under_test.is_tansu


@pytest.fixture
def topic_factory(kafka_bootstrap: str) -> Callable[..., str]:
    """Create a uniquely named topic and return its name: ``make(partitions=1, config=None)``."""

    def make(partitions: int = 1, config: Mapping[str, str] | None = None) -> str:
        name = f"t-{uuid.uuid4().hex[:12]}"
        spec = TopicSpec(name, partitions, config=dict(config or {}))
        asyncio.run(ensure_topics(kafka_bootstrap, [spec], timeout_s=20))
        return name

    return make


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under this folder ``integration`` (the hook sees the whole session)."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def app_env(kafka_bootstrap: str) -> dict[str, str]:
    """Environment of a worker with its own app id and topics, so tests never share state."""
    env = topic_env(f"it-{uuid.uuid4().hex[:8]}", PARTITIONS)
    create_topics(Settings.from_env({**env, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}))
    return env


@pytest.fixture
def worker(kafka_bootstrap: str, app_env: dict[str, str], tmp_path: Path) -> Iterator[WorkerProcess]:
    """A ready `stream-app worker` process on the test's own topics, stopped afterwards."""
    w = WorkerProcess(kafka_bootstrap, tmp_path / "worker", app_env).start()
    try:
        w.wait_ready()
        yield w
    finally:
        w.stop()
