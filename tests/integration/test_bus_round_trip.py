"""Every record type through the real broker, keys and ordering included."""

from __future__ import annotations

import dataclasses
import os
import uuid

import pytest

from services.core.errors import BrokerUnavailableError, DeliveryError
from services.oona.admin import delete_topics, ensure_topics, wait_for_broker
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import avro_topics, topic_spec
from tests.integration.conftest import consume_until
from tests.samples import message_for

AVRO_TOPICS = [spec.name for spec in avro_topics()]


def test_the_broker_answers(kafka_settings):
    assert wait_for_broker(kafka_settings, timeout_s=10) >= 1


def test_an_unreachable_broker_is_an_error_not_a_skip():
    with pytest.raises(BrokerUnavailableError, match="127.0.0.1:9"):
        wait_for_broker(KafkaSettings(bootstrap_servers="127.0.0.1:9"), timeout_s=1)


@pytest.mark.parametrize("name", AVRO_TOPICS)
def test_every_record_type_round_trips_through_kafka(name, topic_factory, producer_factory, consumer_factory):
    spec = topic_factory(name)
    dlq = topic_factory("esper.dlq")
    producer = producer_factory()
    sent = [message_for(spec, run_id=f"run-{i % 2}") for i in range(6)]
    for message in sent:
        producer.publish(spec, message)
    producer.flush()

    consumer = consumer_factory([spec], dlq)
    got = consume_until(consumer, len(sent))
    assert sorted(d.message.event_id for d in got) == sorted(m.event_id for m in sent)
    by_id = {m.event_id: m for m in sent}
    for delivered in got:
        original = by_id[delivered.message.event_id]
        assert delivered.message.payload == original.payload
        assert delivered.message.run_id == original.run_id
        assert delivered.topic == spec.name
        expected_key = original.run_id if spec.key == "run_id" else getattr(original.payload, spec.key)
        assert delivered.key == expected_key.encode()
    assert consumer.dead_lettered == 0


def test_events_of_one_run_stay_ordered_in_one_partition(topic_factory, producer_factory, consumer_factory):
    spec = topic_factory("telemetry.seed.health", partitions=6)
    dlq = topic_factory("esper.dlq")
    producer = producer_factory()
    runs = ["alpha", "beta", "gamma"]
    sent = [message_for(spec, run_id=runs[i % 3]) for i in range(300)]
    producer.publish_many(spec, sent)
    producer.flush()
    got = consume_until(consumer_factory([spec], dlq), len(sent))
    assert len(got) == len(sent)
    for run in runs:
        in_run = [d for d in got if d.message.run_id == run]
        assert len({d.partition for d in in_run}) == 1
        assert [d.message.event_id for d in sorted(in_run, key=lambda d: d.offset)] == [
            m.event_id for m in sent if m.run_id == run
        ]


def test_committed_offsets_resume_where_the_group_stopped(topic_factory, producer_factory, consumer_factory):
    spec = topic_factory("system.events.epoch", partitions=1)
    dlq = topic_factory("esper.dlq")
    producer = producer_factory()
    first = [message_for(spec) for _ in range(5)]
    for message in first:
        producer.publish(spec, message)
    producer.flush()
    consumer = consumer_factory([spec], dlq, group_id="resume-group-" + spec.name)
    assert len(consume_until(consumer, 5)) == 5
    consumer.commit()
    consumer.close()

    second = [message_for(spec) for _ in range(3)]
    for message in second:
        producer.publish(spec, message)
    producer.flush()
    again = consumer_factory([spec], dlq, group_id="resume-group-" + spec.name)
    got = consume_until(again, 3)
    assert [d.message.event_id for d in got] == [m.event_id for m in second]


@pytest.mark.parametrize("how", ["publish_many", "produce_raw"])
def test_what_the_broker_refuses_surfaces_on_flush(how, kafka_settings, producer_factory):
    """The delivery callback is set once in the config; a refused message still reaches flush."""
    base = topic_spec("telemetry.seed.health")
    spec = dataclasses.replace(base, name=f"test.{uuid.uuid4().hex[:10]}.tiny", partitions=1,
                               configs={"max.message.bytes": "200"})  # smaller than any batch of these
    ensure_topics(kafka_settings, [spec])
    try:
        producer = producer_factory()
        if how == "publish_many":
            producer.publish_many(spec, [message_for(spec, run_id="r") for _ in range(20)])
        else:
            producer.produce_raw(spec.name, os.urandom(1000), b"r")  # incompressible: lz4 cannot shrink it
        with pytest.raises(DeliveryError, match=spec.name):
            producer.flush(timeout_s=30)
        producer.flush(timeout_s=30)  # reported once: the producer goes on
    finally:
        delete_topics(kafka_settings, [spec.name])
