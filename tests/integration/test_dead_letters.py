"""Poison messages land in the DLQ with a reason; the good ones around them are all processed."""

from __future__ import annotations

import os
import uuid

from contracts.dead_letter import DLQ_HEADER_ERROR_TYPE, DLQ_HEADER_OFFSET, DLQ_HEADER_REASON, DLQ_HEADER_TOPIC
from services.oona.consumer import dead_letter_from_message
from tests.integration.conftest import consume_until, read_raw
from tests.samples import message_for


def test_poison_messages_are_dead_lettered_and_nothing_is_lost(
    kafka_settings, codec, topic_factory, producer_factory, consumer_factory
):
    spec = topic_factory("telemetry.seed.health", partitions=1)
    dlq = topic_factory("esper.dlq")
    producer = producer_factory()

    good = [message_for(spec) for _ in range(6)]
    valid_bytes = codec.encode(spec, good[0])
    unknown_fingerprint = valid_bytes[:2] + b"\x13" * 8 + valid_bytes[10:]
    bad_payload = good[0].payload.model_copy(update={"health_score": 7.0})
    contract_invalid = codec.encode(spec, good[0].model_copy(update={"payload": bad_payload}))
    oversized = os.urandom(kafka_settings.max_event_bytes + 1)
    poison = {
        "random bytes": os.urandom(64),
        "unknown fingerprint": unknown_fingerprint,
        "contract invalid": contract_invalid,
        "oversized": oversized,
    }

    # good, poison, good, poison, ... so that every poison message sits between good ones
    order = []
    for i, (label, raw) in enumerate(poison.items()):
        producer.publish(spec, good[i])
        producer.produce_raw(spec.name, raw, key=b"poison")
        order.append(label)
    for message in good[len(poison):]:
        producer.publish(spec, message)
    producer.flush()

    dead = []
    consumer = consumer_factory([spec], dlq, on_dead_letter=dead.append)
    got = consume_until(consumer, len(good))
    consumer.commit()

    assert [d.message.event_id for d in got] == [m.event_id for m in good], "every good message, in order"
    assert consumer.dead_lettered == len(poison)
    assert [d.error_type for d in dead] == ["DecodeError", "UnknownSchemaError", "ContractViolationError", "OversizedMessageError"]

    letters = read_raw(kafka_settings, dlq.name, len(poison))
    assert len(letters) == len(poison)
    for label, letter in zip(order, letters, strict=True):
        headers = dict(letter.headers())
        assert headers[DLQ_HEADER_TOPIC].decode() == spec.name
        assert letter.value() == poison[label], f"{label}: original bytes kept whole"
        assert headers[DLQ_HEADER_REASON], label
        record = dead_letter_from_message(letter)
        assert record.source_topic == spec.name
        assert record.original_key == b"poison"
    reasons = [dict(m.headers())[DLQ_HEADER_REASON].decode() for m in letters]
    assert "not Avro single-object encoded" in reasons[0]
    assert "unknown writer schema fingerprint 1313131313131313" in reasons[1]
    assert "health_score" in reasons[2]
    assert "exceeds max_event_bytes" in reasons[3]
    offsets = [int(dict(m.headers())[DLQ_HEADER_OFFSET]) for m in letters]
    assert offsets == [1, 3, 5, 7], "poison sat at odd offsets between good messages"


class _BuggyDecoder:
    """A codec whose decoder has a bug on one event (raises OverflowError, not DecodeError)."""

    def __init__(self, codec, bad_event_id: str) -> None:
        self.codec, self.bad_event_id = codec, bad_event_id

    def decode(self, spec, value):
        message = self.codec.decode(spec, value)
        if message.event_id == self.bad_event_id:
            raise OverflowError("int too big to convert")
        return message

    def __getattr__(self, name):
        return getattr(self.codec, name)


def test_a_record_whose_decoding_or_handling_raises_is_dead_lettered_and_the_consumer_goes_on(
    kafka_settings, codec, topic_factory, producer_factory
):
    from services.oona.consumer import OonaConsumer

    spec = topic_factory("telemetry.seed.health", partitions=1)
    dlq = topic_factory("esper.dlq")
    producer = producer_factory()
    events = [message_for(spec) for _ in range(6)]
    producer.publish_many(spec, events)
    producer.flush()
    undecodable, unhandleable = events[1], events[4]

    def handle(delivered):
        if delivered.message.event_id == unhandleable.event_id:
            raise StopIteration  # e.g. a layer that is not among the declared ones
        return delivered.message.event_id

    group = f"iso-{uuid.uuid4().hex[:8]}"
    consumer = OonaConsumer(kafka_settings, _BuggyDecoder(codec, undecodable.event_id), group_id=group, topics=[spec],
                            dead_letters=producer_factory(), dlq_topic=dlq.name)
    try:
        got = consume_until(consumer, len(events) - 1)
        handled = [consumer.handle_isolated(d, handle) for d in got]
        consumer.commit()
    finally:
        consumer.close()

    assert handled == [m.event_id for m in events if m is not undecodable][:3] + [None] + [events[5].event_id]
    assert _committed(kafka_settings, group, spec.name) == len(events), "the offsets pass both failed records"
    letters = read_raw(kafka_settings, dlq.name, 2)
    headers = [dict(m.headers()) for m in letters]
    assert [int(h[DLQ_HEADER_OFFSET]) for h in headers] == [1, 4]
    assert [h[DLQ_HEADER_ERROR_TYPE] for h in headers] == [b"OverflowError", b"StopIteration"]
    assert [h[DLQ_HEADER_REASON] for h in headers] == [b"OverflowError: int too big to convert", b"StopIteration"]
    assert [m.value() for m in letters] == [codec.encode(spec, undecodable), codec.encode(spec, unhandleable)]


def _committed(kafka_settings, group, topic):
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(kafka_settings.client_config() | {"group.id": group, "enable.auto.commit": False})
    try:
        return consumer.committed([TopicPartition(topic, 0)], timeout=10)[0].offset
    finally:
        consumer.close()
