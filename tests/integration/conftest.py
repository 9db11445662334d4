"""Integration fixtures: one real Kafka broker per test session, unique topics per test.

The broker is, in order of preference:
1. ``KAFKA_BOOTSTRAP_SERVERS`` when set (an existing cluster),
2. testcontainers' Kafka when a Docker engine answers,
3. the project's own local KRaft broker (``services.oona.local_broker``) on test ports.
If none can be had the tests fail; they are never skipped.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Iterator

import pytest

from services.core.paths import REPO_ROOT
from services.oona.admin import delete_topics, ensure_topics, wait_for_broker
from services.oona.codec import SingleObjectCodec
from services.oona.consumer import OonaConsumer
from services.oona.local_broker import LocalBrokerConfig, LocalKafka
from services.oona.producer import OonaProducer
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import TopicSpec, topic_spec

TEST_BROKER_PORT = int(os.environ.get("ESPER_TEST_BROKER_PORT", "19092"))


def _docker_available() -> bool:
    if not (os.environ.get("DOCKER_HOST") or os.path.exists("/var/run/docker.sock")):
        return False
    import docker

    try:
        client = docker.from_env(timeout=2)
    except Exception:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def local_broker_config(port: int = TEST_BROKER_PORT, name: str = "test-broker") -> LocalBrokerConfig:
    return LocalBrokerConfig(
        state_dir=REPO_ROOT / ".state" / name,
        cache_dir=REPO_ROOT / ".cache",
        port=port,
        controller_port=port + 1,
        heap="768m",
    )


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        wait_for_broker(KafkaSettings(bootstrap_servers=external), timeout_s=30)
        yield external
        return
    if _docker_available():
        from testcontainers.community.kafka import KafkaContainer

        # testcontainers' Kafka module drives Confluent's image (KRaft mode).
        with KafkaContainer("confluentinc/cp-kafka:7.9.0").with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    broker = LocalKafka(local_broker_config())
    started_here = broker.pid() is None
    broker.start()
    yield broker.cfg.bootstrap_servers
    if started_here:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_settings(kafka_bootstrap: str) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=kafka_bootstrap, client_id="esper-tests", connect_timeout_s=30)


@pytest.fixture(scope="session")
def codec() -> SingleObjectCodec:
    return SingleObjectCodec()


@pytest.fixture
def topic_factory(kafka_settings: KafkaSettings):
    """``topic_factory("telemetry.seed.health")`` -> a uniquely named copy of that topic, created."""
    created: list[str] = []

    def make(name: str, partitions: int | None = None) -> TopicSpec:
        base = topic_spec(name)
        spec = dataclasses.replace(
            base, name=f"test.{uuid.uuid4().hex[:10]}.{name}", partitions=partitions or base.partitions,
            scaling=None if partitions else base.scaling,  # a count asked for here is not the settings' to change
        )
        ensure_topics(kafka_settings, [spec])
        created.append(spec.name)
        return spec

    yield make
    delete_topics(kafka_settings, created)


@pytest.fixture
def producer_factory(kafka_settings: KafkaSettings, codec: SingleObjectCodec):
    producers: list[OonaProducer] = []

    def make(**kwargs) -> OonaProducer:
        producer = OonaProducer(kafka_settings, codec, **kwargs)
        producers.append(producer)
        return producer

    yield make
    for producer in producers:
        producer.close(timeout_s=10)


@pytest.fixture
def consumer_factory(kafka_settings: KafkaSettings, codec: SingleObjectCodec, producer_factory):
    consumers: list[OonaConsumer] = []

    def make(topics: list[TopicSpec], dlq: TopicSpec, group_id: str | None = None, **kwargs) -> OonaConsumer:
        consumer = OonaConsumer(
            kafka_settings, codec, group_id=group_id or f"test-{uuid.uuid4().hex[:10]}", topics=topics,
            dead_letters=kwargs.pop("dead_letters", None) or producer_factory(), dlq_topic=dlq.name, **kwargs,
        )
        consumers.append(consumer)
        return consumer

    yield make
    for consumer in consumers:
        consumer.close()


@pytest.fixture
def esper_settings(kafka_bootstrap: str, tmp_path):
    """Settings for a whole service/run under a unique topic prefix, with every topic created."""
    from services.cli.settings import EsperSettings
    from services.oona.topic_registry import all_topics

    prefix = f"it.{uuid.uuid4().hex[:8]}."
    settings = EsperSettings(kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix),
                             state_dir=tmp_path / "state", external_cluster=True)
    ensure_topics(settings.kafka, all_topics(prefix))
    yield settings
    delete_topics(settings.kafka, [spec.name for spec in all_topics(prefix)])


def consume_until(consumer: OonaConsumer, count: int, timeout_s: float = 30.0) -> list:
    """Consume until ``count`` events arrived or the timeout passed (a condition, not a sleep)."""
    import time

    got: list = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count and time.monotonic() < deadline:
        got.extend(consumer.consume(500, 0.5))
    return got


def read_raw(kafka_settings: KafkaSettings, topic: str, count: int, timeout_s: float = 30.0) -> list:
    """Read ``count`` raw messages (bytes and headers) from the start of ``topic``."""
    import time

    from services.oona import clients

    consumer = clients.consumer(kafka_settings, {
        "group.id": f"raw-{uuid.uuid4().hex[:8]}", "auto.offset.reset": "earliest", "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    got = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < count and time.monotonic() < deadline:
            for msg in consumer.consume(100, 0.5):
                if msg.error() is None:
                    got.append(msg)
    finally:
        consumer.close()
    return got


