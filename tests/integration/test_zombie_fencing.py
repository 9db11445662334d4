"""Exactly-once against a zombie: two producers with one transactional id (a service that was presumed
dead, replaced, and wakes up). The newer one's ``init_transactions`` fences the older: the zombie's
commit fails with a fencing error and nothing it wrote ever becomes visible to read_committed readers,
while the new instance's writes do."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

from services.oona import clients
from services.oona.producer import OonaProducer
from tests.samples import message_for

FENCED = {KafkaError._FENCED, KafkaError.INVALID_PRODUCER_EPOCH, KafkaError.PRODUCER_FENCED}


def read_all(kafka_settings, topic: str, isolation: str, expected_at_least: int, timeout_s: float = 30.0) -> list:
    """Every record of ``topic`` (one partition) up to its end, read with ``isolation``."""
    consumer = clients.consumer(kafka_settings, {
        "group.id": f"zombie-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False, "isolation.level": isolation,
        "enable.partition.eof": True})
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        got, at_end = [], False
        deadline = time.monotonic() + timeout_s
        while not (at_end and len(got) >= expected_at_least):
            assert time.monotonic() < deadline, f"read {len(got)} records of {topic} ({isolation})"
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None:
                at_end = msg.error().code() == KafkaError._PARTITION_EOF
                continue
            at_end = False
            got.append(msg)
        return got
    finally:
        consumer.close()


def test_a_zombie_transactional_producer_is_fenced_and_its_writes_stay_invisible(
        kafka_settings, codec, topic_factory, producer_factory):
    topic = topic_factory("telemetry.seed.health", partitions=1)
    txn_id = f"zombie-{uuid.uuid4().hex[:8]}"
    # Not from producer_factory: a fenced producer's close (a flush) raises the fencing error again.
    zombie = OonaProducer(kafka_settings, codec, transactional_id=txn_id)
    zombie.init_transactions()
    zombie.begin_transaction()
    zombie_ids = []
    for _ in range(3):
        message = message_for(topic, run_id="zombie")
        zombie_ids.append(message.event_id)
        zombie.publish(topic, message)
    zombie.flush(10)  # the writes reach the broker: only the commit is outstanding

    successor = producer_factory(transactional_id=txn_id)
    successor.init_transactions()  # bumps the epoch: the zombie is fenced from here on
    successor.begin_transaction()
    fresh = message_for(topic, run_id="successor")
    successor.publish(topic, fresh)
    successor.commit_transaction()

    with pytest.raises(KafkaException) as fenced:
        zombie.commit_transaction(timeout_s=30)
    error = fenced.value.args[0]
    print(f"zombie commit refused: code={error.name()} fatal={error.fatal()} reason={error.str()}")
    assert error.code() in FENCED or error.fatal(), error.str()
    # A fenced producer can no longer open a transaction either.
    with pytest.raises(KafkaException):
        zombie.begin_transaction()
        zombie.publish(topic, message_for(topic, run_id="zombie"))
        zombie.commit_transaction(timeout_s=10)

    committed = read_all(kafka_settings, topic.name, "read_committed", expected_at_least=1)
    visible = [codec.decode(topic, m.value()).event_id for m in committed]
    raw = read_all(kafka_settings, topic.name, "read_uncommitted", expected_at_least=len(zombie_ids) + 1)
    written = [codec.decode(topic, m.value()).event_id for m in raw]
    print(f"records on the partition (read_uncommitted)={len(written)}; visible to read_committed={visible}")
    assert set(zombie_ids) <= set(written), "the zombie's writes never reached the log: nothing was fenced"
    assert visible == [fresh.event_id]
