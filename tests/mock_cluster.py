"""librdkafka's in-process mock cluster, for fast unit tests of Kafka plumbing without a broker."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from confluent_kafka import Producer

from services.oona.settings import KafkaSettings


@contextmanager
def mock_cluster(brokers: int = 1, client_id: str = "tests") -> Iterator[KafkaSettings]:
    """Settings whose bootstrap servers are a mock cluster of ``brokers`` brokers, alive for the block
    (the cluster lives as long as the client that owns it)."""
    owner = Producer({"test.mock.num.brokers": brokers, "log_level": 0})
    nodes = owner.list_topics(timeout=10).brokers.values()
    try:
        yield KafkaSettings(bootstrap_servers=",".join(f"{b.host}:{b.port}" for b in nodes), client_id=client_id)
    finally:
        owner.flush(1)
