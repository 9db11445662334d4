"""A consumer whose group dropped it gets partitions again and reads on (the real broker's group coordinator)."""

from __future__ import annotations

import uuid

import pytest

from services.oona.admin import OffsetReader
from services.oona.consumer import OonaConsumer
from tests.integration.conftest import consume_until
from tests.samples import message_for
from tests.waiting import wait_until


def publish_one(producer, spec) -> str:
    message = message_for(spec, run_id="rejoin")
    producer.publish(spec, message)
    producer.flush()
    return message.event_id


@pytest.mark.timeout(180)
def test_a_consumer_held_past_max_poll_interval_gets_its_partitions_again(
        kafka_settings, topic_factory, producer_factory, consumer_factory):
    """librdkafka leaves the group when the poll loop is held past max.poll.interval.ms; the next poll rejoins."""
    spec, dlq = topic_factory("telemetry.seed.health"), topic_factory("esper.dlq")
    producer = producer_factory()
    group = f"held-{uuid.uuid4().hex[:8]}"
    # The broker's smallest session timeout (group.min.session.timeout.ms); the poll interval may not be shorter.
    consumer = consumer_factory([spec], dlq, group_id=group,
                                config={"session.timeout.ms": 6000, "max.poll.interval.ms": 6000})
    first = publish_one(producer, spec)
    assert [d.message.event_id for d in consume_until(consumer, 1)] == [first]
    consumer.commit()  # the rejoined member starts after it
    members = OffsetReader(kafka_settings)
    assert members.group_members(group)
    # Held (not polled) until the coordinator has no member left: the client left the group by itself.
    wait_until(lambda: not members.group_members(group), 60, "the held consumer to leave its group")
    second = publish_one(producer, spec)
    assert [d.message.event_id for d in consume_until(consumer, 1, timeout_s=60)] == [second]
    assert consumer.assignment() and consumer.recreated == 0


@pytest.mark.timeout(180)
def test_a_consumer_left_out_of_its_group_is_recreated_and_reads_on(
        kafka_settings, topic_factory, producer_factory, codec):
    """A client that no longer joins its group (here: unsubscribed behind the consumer's back, as librdkafka
    once stayed for 6 minutes after a load spike) is re-created after ``rejoin_after_s`` without partitions."""
    spec, dlq = topic_factory("telemetry.seed.health"), topic_factory("esper.dlq")
    producer = producer_factory()
    settings = kafka_settings.model_copy(update={"rejoin_after_s": 2.0})
    consumer = OonaConsumer(settings, codec, group_id=f"dropped-{uuid.uuid4().hex[:8]}", topics=[spec],
                            dead_letters=producer, dlq_topic=dlq.name)
    try:
        first = publish_one(producer, spec)
        assert [d.message.event_id for d in consume_until(consumer, 1)] == [first]
        consumer.commit()  # the new client starts after it
        consumer._consumer.unsubscribe()  # out of the group, and it stays out: no subscription to rejoin with
        second = publish_one(producer, spec)
        got = consume_until(consumer, 1, timeout_s=90)
        assert [d.message.event_id for d in got] == [second]
        assert consumer.recreated == 1 and consumer.assignment()
    finally:
        consumer.close()


@pytest.mark.timeout(120)
def test_a_member_without_partitions_in_a_group_with_more_members_than_partitions_is_left_alone(
        kafka_settings, topic_factory, producer_factory, codec):
    """The coordinator counts it as a member: re-creating it would only make the group rebalance again."""
    spec, dlq = topic_factory("telemetry.seed.health", partitions=1), topic_factory("esper.dlq")
    producer = producer_factory()
    settings = kafka_settings.model_copy(update={"rejoin_after_s": 1.0})
    group = f"spare-{uuid.uuid4().hex[:8]}"
    consumers = [OonaConsumer(settings, codec, group_id=group, topics=[spec], dead_letters=producer,
                              dlq_topic=dlq.name) for _ in range(2)]
    members = OffsetReader(kafka_settings)
    try:
        def settled() -> bool:
            for consumer in consumers:
                consumer.consume(10, 0.2)
            return len(members.group_members(group)) == 2 and sum(len(c.assignment()) for c in consumers) == 1

        wait_until(settled, 60, "two members sharing the one partition")
        spare = next(c for c in consumers if not c.assignment())

        def membership_checked() -> bool:
            spare.consume(10, 0.2)
            return spare._next_membership_check > 0

        wait_until(membership_checked, 60, "the spare member's membership asked past rejoin_after_s")
        assert spare.recreated == 0 and spare._consumer.memberid() in members.group_members(group)
    finally:
        for consumer in consumers:
            consumer.close()
