"""Poison messages land in the DLQ with a reason; the good ones around them are all processed."""

from __future__ import annotations

import os
import time
import uuid

from contracts.dead_letter import DLQ_HEADER_ERROR_TYPE, DLQ_HEADER_OFFSET, DLQ_HEADER_REASON, DLQ_HEADER_TOPIC
from services.oona import clients
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
    assert [d.error_type for d in dead] == ["DecodeError", "UnknownSchemaError", "ContractViolationError",
                                            "OversizedMessageError"]

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

    def decode_batch(self, spec, values):
        from services.oona.codec import decode_each

        return decode_each(self, spec, values)

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
    from confluent_kafka import TopicPartition


    consumer = clients.consumer(kafka_settings, {"group.id": group, "enable.auto.commit": False})
    try:
        return consumer.committed([TopicPartition(topic, 0)], timeout=10)[0].offset
    finally:
        consumer.close()


def test_a_dead_letter_keeps_the_original_headers_beside_its_own(kafka_settings, codec, topic_factory,
                                                                 producer_factory, consumer_factory):
    spec = topic_factory("telemetry.seed.health", partitions=1)
    dlq = topic_factory("esper.dlq")
    producer = producer_factory()
    event = message_for(spec)
    original = [("traceparent", b"00-4bf92f3577b34da6-00f067aa0ba902b7-01"), ("tenant", b"lab-a"), ("empty", None),
                (DLQ_HEADER_REASON, b"a header of the DLQ's own name")]
    producer.produce_raw(spec.name, b"\x00not avro", b"k", original)  # undecodable
    producer.produce_raw(spec.name, codec.encode(spec, event), b"k", original)  # decodes; its handling fails
    producer.flush()

    def handle(delivered):
        raise ValueError("this consumer cannot use it")

    consumer = consumer_factory([spec], dlq)
    for delivered in consume_until(consumer, 1):
        consumer.handle_isolated(delivered, handle)
    consumer.commit()

    letters = read_raw(kafka_settings, dlq.name, 2)
    assert len(letters) == 2
    for letter in letters:
        headers = letter.headers()
        assert headers[:3] == original[:3], "the original headers first, in order (Kafka Connect's convention)"
        names = [k for k, _ in headers]
        assert names.count(DLQ_HEADER_REASON) == 1, "an original header of the DLQ's own name is not copied"
        assert dict(headers)[DLQ_HEADER_TOPIC] == spec.name.encode()
    assert [dict(m.headers())[DLQ_HEADER_REASON] for m in letters][1] == b"ValueError: this consumer cannot use it"


def test_reading_again_from_the_beginning_does_not_dead_letter_a_record_again(kafka_settings, codec, topic_factory,
                                                                             producer_factory):
    """An exactly-once processor that rebuilds (reads its input from the beginning at every assignment and when
    asked) meets its poison records again: each stays one dead letter, across rebuilds and restarts."""
    from confluent_kafka import OFFSET_BEGINNING

    from services.oona.transactions import ExactlyOnceProcessor

    spec = topic_factory("telemetry.seed.health", partitions=1)
    dlq = topic_factory("esper.dlq")
    producer = producer_factory()
    events = [message_for(spec) for _ in range(4)]
    producer.publish(spec, events[0])
    producer.produce_raw(spec.name, b"\x00not avro", b"poison")  # offset 1: undecodable
    for event in events[1:]:
        producer.publish(spec, event)
    producer.flush()
    unhandleable = events[2].event_id  # offset 3: its handler raises
    group, seen = f"rebuild-{uuid.uuid4().hex[:8]}", []

    def handle(delivered):
        seen.append(delivered.offset)
        if delivered.message.event_id == unhandleable:
            raise ValueError("cannot use it")
        return []

    def from_beginning(partitions):
        for tp in partitions:
            tp.offset = OFFSET_BEGINNING

    def processor():
        return ExactlyOnceProcessor(kafka_settings, codec, group_id=group, transactional_id=group, inputs=[spec],
                                    handler=handle, dlq_topic=dlq.name, on_assign=from_beginning)

    def read_all(proc, reads: int) -> None:
        deadline = time.monotonic() + 60
        while seen.count(4) < reads:  # offset 4, the last record, read this many times
            assert time.monotonic() < deadline, f"read {seen}"
            proc.process_batch(timeout_s=0.5)

    first = processor()
    try:
        read_all(first, 1)
        assert first.consumer.dead_lettered == 2
        first.consumer.rewind_to_beginning()  # a rebuild
        read_all(first, 2)
        assert first.consumer.dead_lettered == 2, "the rebuild dead-lettered them again"
        assert first.consumer.already_dead_lettered == 2
    finally:
        first.close()
    restarted = processor()
    try:
        read_all(restarted, 3)
        assert restarted.consumer.dead_lettered == 0, "the restart dead-lettered them again"
        assert restarted.consumer.already_dead_lettered == 2
    finally:
        restarted.close()
    producer.produce_raw(spec.name, b"\x00new poison", b"poison")  # offset 5: new, dead-lettered
    producer.flush()
    again = processor()
    try:
        deadline = time.monotonic() + 60
        while again.consumer.dead_lettered < 1:
            assert time.monotonic() < deadline
            again.process_batch(timeout_s=0.5)
    finally:
        again.close()
    letters = [int(dict(m.headers())[DLQ_HEADER_OFFSET]) for m in whole_topic(kafka_settings, dlq.name)]
    assert letters == [1, 3, 5], "each poison record dead-lettered exactly once"


def test_tamiyo_rebuilding_or_restarted_does_not_dead_letter_a_poison_input_again(esper_settings):
    from contracts import TopicName
    from services.oona.codec import SingleObjectCodec
    from services.oona.producer import OonaProducer
    from services.oona.topic_registry import topic_spec
    from services.tamiyo.service import Tamiyo
    from tests.integration.test_tamiyo_recovery import publish_runs
    from tests.integration.test_tamiyo_totality import step_until
    from tests.tamiyo_events import plateau_run

    kafka = esper_settings.kafka
    health = topic_spec(TopicName.TELEMETRY_SEED_HEALTH.value, kafka.topic_prefix)
    dlq = topic_spec(TopicName.DLQ.value, kafka.topic_prefix)
    run_id = f"poison-{uuid.uuid4().hex[:6]}"
    producer = OonaProducer(kafka, SingleObjectCodec())
    producer.produce_raw(health.name, b"\x00not a health signal", run_id.encode(), [("traceparent", b"t-1")])
    producer.flush()
    publish_runs(kafka, {run_id: plateau_run(epochs=3)})

    def mine():
        return [m for m in whole_topic(kafka, dlq.name) if dict(m.headers())[DLQ_HEADER_TOPIC] == health.name.encode()]

    service = Tamiyo(kafka, SingleObjectCodec(), instance="poison", scatter="native")
    try:
        step_until(service, lambda: service.settled and service.decided >= 3, 120, "the run decided")
        assert service.processor.consumer.dead_lettered == 1
        service.rebuild()  # reads the inputs again from the beginning: the poison record again
        step_until(service, lambda: service.settled and service.processor.consumer.already_dead_lettered == 1, 60,
                   "the rebuild past the poison record")
    finally:
        service.close()
    restarted = Tamiyo(kafka, SingleObjectCodec(), instance="poison", scatter="native")
    try:
        step_until(restarted, lambda: restarted.settled and restarted.processor.consumer.already_dead_lettered == 1,
                   60, "the restart past the poison record")
        assert restarted.processor.consumer.dead_lettered == 0
    finally:
        restarted.close()
    letters = mine()
    assert len(letters) == 1, [dict(m.headers())[DLQ_HEADER_OFFSET] for m in letters]
    assert letters[0].headers()[0] == ("traceparent", b"t-1")


def whole_topic(kafka_settings, topic: str) -> list:
    """Every committed record of ``topic`` up to its end now (raw: bytes and headers)."""
    from confluent_kafka import OFFSET_BEGINNING

    from services.oona.admin import end_offsets, partitions_of
    from services.oona.log_reader import read_range

    admin = clients.admin(kafka_settings)
    ends = end_offsets(admin, partitions_of(admin, [topic]))
    return read_range(kafka_settings, {key: (OFFSET_BEGINNING, end) for key, end in ends.items()})
