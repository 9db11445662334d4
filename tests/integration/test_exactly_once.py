"""Consume-transform-produce in Kafka transactions: all of a batch or none of it; a record whose
handling fails is dead-lettered in the batch's transaction and the processor goes on."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from contracts import AdaptationDecision, AdaptationType
from contracts.dead_letter import (
    DLQ_HEADER_ERROR_TYPE,
    DLQ_HEADER_GROUP,
    DLQ_HEADER_OFFSET,
    DLQ_HEADER_PARTITION,
    DLQ_HEADER_REASON,
    DLQ_HEADER_TOPIC,
)
from services.oona import clients
from services.oona.admin import end_offsets
from services.oona.consumer import OonaConsumer
from services.oona.transactions import ExactlyOnceProcessor
from tests.integration.conftest import consume_until, read_raw
from tests.samples import message_for
from tests.waiting import wait_until


def _decide(out_spec):
    def handler(delivered):
        signal = delivered.message.payload
        decision = AdaptationDecision(
            decision_id=f"d-{delivered.message.event_id}", layer_name=signal.layer_name or "l",
            adaptation_type=AdaptationType.NO_OP, confidence=0.5, urgency=signal.health_score, epoch=signal.epoch,
        )
        yield out_spec, out_spec.message_type(
            sender_id="tests", topic=out_spec.name, run_id=delivered.message.run_id,
            trace_id=delivered.message.event_id, payload=decision,
        )

    return handler


def test_outputs_and_offsets_commit_together(kafka_settings, codec, topic_factory, producer_factory, consumer_factory):
    source = topic_factory("telemetry.seed.health", partitions=2)
    sink = topic_factory("control.tamiyo.decisions")
    dlq = topic_factory("esper.dlq")
    producer = producer_factory()
    inputs = [message_for(source, run_id=f"r{i % 3}") for i in range(20)]
    producer.publish_many(source, inputs)
    producer.flush()

    group = f"eos-{uuid.uuid4().hex[:8]}"
    calls = {"n": 0}
    handler = _decide(sink)

    def flaky(delivered):
        calls["n"] += 1
        if calls["n"] == 5:  # the bus fails mid-batch: abort, never a dead letter
            raise KafkaException(KafkaError(KafkaError._TRANSPORT, "crash in the middle of a batch"))
        return handler(delivered)

    processor = ExactlyOnceProcessor(
        kafka_settings, codec, group_id=group, transactional_id=f"{group}-0", inputs=[source], handler=flaky,
        dlq_topic=dlq.name,
    )
    with pytest.raises(KafkaException, match="crash in the middle"):
        while True:
            processor.process_batch(max_messages=50, timeout_s=1.0)
    processor.close()

    # A restarted instance (same transactional id fences the old one) finishes the job.
    processor = ExactlyOnceProcessor(
        kafka_settings, codec, group_id=group, transactional_id=f"{group}-0", inputs=[source], handler=handler,
        dlq_topic=dlq.name,
    )
    handled = 0
    for _ in range(30):
        handled += processor.process_batch(max_messages=50, timeout_s=0.5)
        if handled >= len(inputs):
            break
    processor.close()

    reader = consumer_factory([sink], dlq)  # read_committed: aborted outputs are invisible
    got = consume_until(reader, len(inputs), timeout_s=20)
    got += reader.consume(500, 2.0)  # anything extra would be a duplicate
    traces = [d.message.trace_id for d in got]
    assert sorted(traces) == sorted(m.event_id for m in inputs), "each input decided exactly once"
    assert len(traces) == len(set(traces))
    assert _end_offsets(kafka_settings, dlq.name) == {(dlq.name, 0): 0}, "a transient error is never dead-lettered"


def _end_offsets(kafka_settings, topic, partitions=1):
    return end_offsets(clients.admin(kafka_settings), [(topic, p) for p in range(partitions)], committed_only=False)


def _committed(kafka_settings, group, topic, partitions):
    consumer = clients.consumer(kafka_settings, {"group.id": group, "enable.auto.commit": False})
    try:
        tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {(tp.topic, tp.partition): tp.offset for tp in tps}
    finally:
        consumer.close()


def test_a_record_whose_handler_raises_is_dead_lettered_and_the_processor_goes_on(
    kafka_settings, codec, topic_factory, producer_factory, consumer_factory
):
    source = topic_factory("telemetry.seed.health", partitions=2)
    sink = topic_factory("control.tamiyo.decisions")
    dlq = topic_factory("esper.dlq")
    producer = producer_factory()
    inputs = [message_for(source, run_id=f"r{i}") for i in range(20)]
    producer.publish_many(source, inputs)
    producer.flush()
    poison = inputs[7]
    decide = _decide(sink)

    def handler(delivered):
        if delivered.message.event_id == poison.event_id:
            raise IndexError(f"no layer for {poison.event_id}")
        return decide(delivered)

    group = f"eos-{uuid.uuid4().hex[:8]}"
    processor = ExactlyOnceProcessor(
        kafka_settings, codec, group_id=group, transactional_id=f"{group}-0", inputs=[source], handler=handler,
        dlq_topic=dlq.name,
    )
    handled, deadline = 0, time.monotonic() + 60
    while handled < len(inputs):  # the record's failure does not escape process_batch
        assert time.monotonic() < deadline, f"only {handled} of {len(inputs)} handled"
        handled += processor.process_batch(max_messages=50, timeout_s=0.5)
    assert processor.failed == 1
    assert processor.process_batch(max_messages=50, timeout_s=0.5) == 0, "still running, nothing read twice"
    processor.close()

    ends = {tp: end for tp, end in _end_offsets(kafka_settings, source.name, partitions=2).items() if end > 0}
    committed = _committed(kafka_settings, group, source.name, 2)
    assert {tp: committed[tp] for tp in ends} == ends, "offsets committed past the failing record"

    reader = consumer_factory([sink], dlq)
    got = consume_until(reader, len(inputs) - 1, timeout_s=20)
    got += reader.consume(500, 2.0)  # anything extra would be a duplicate
    traces = [d.message.trace_id for d in got]
    assert sorted(traces) == sorted(m.event_id for m in inputs if m is not poison), "every other record once"

    letters = read_raw(kafka_settings, dlq.name, 1)
    assert len(letters) == 1
    headers = dict(letters[0].headers())
    assert headers[DLQ_HEADER_ERROR_TYPE] == b"IndexError"
    assert headers[DLQ_HEADER_REASON].decode() == f"IndexError: no layer for {poison.event_id}"
    assert headers[DLQ_HEADER_TOPIC].decode() == source.name
    assert headers[DLQ_HEADER_GROUP].decode() == group
    assert letters[0].value() == codec.encode(source, poison), "the original bytes, whole"
    partition, offset = int(headers[DLQ_HEADER_PARTITION]), int(headers[DLQ_HEADER_OFFSET])
    original = read_raw(kafka_settings, source.name, len(inputs))
    assert [m.value() for m in original if (m.partition(), m.offset()) == (partition, offset)] == [letters[0].value()]

    # A restarted instance starts past it: the next thing it reads is an event produced after the run.
    sentinel = message_for(source, run_id="r-after")
    producer.publish(source, sentinel)
    producer.flush()
    seen = []
    processor = ExactlyOnceProcessor(
        kafka_settings, codec, group_id=group, transactional_id=f"{group}-0", inputs=[source],
        handler=lambda d: seen.append(d.message.event_id) or (), dlq_topic=dlq.name,
    )
    deadline = time.monotonic() + 60
    while not seen:
        assert time.monotonic() < deadline, "the restarted processor read nothing"
        processor.process_batch(max_messages=50, timeout_s=0.5)
    processor.close()
    assert seen == [sentinel.event_id], "the failing record is neither handled nor dead-lettered again"
    assert _end_offsets(kafka_settings, dlq.name) == {(dlq.name, 0): 2}, "one dead letter and its commit marker"


def test_a_batch_that_writes_nothing_defers_its_offsets_to_the_next_write_or_the_idle_poll(
    kafka_settings, codec, topic_factory, producer_factory, consumer_factory
):
    source = topic_factory("telemetry.seed.health", partitions=1)
    sink = topic_factory("control.tamiyo.decisions")
    dlq = topic_factory("esper.dlq")
    producer = producer_factory()
    decide = _decide(sink)

    def handler(delivered):  # telemetry of run "quiet" is only folded; run "loud" completes an epoch
        return decide(delivered) if delivered.message.run_id == "loud" else ()

    group = f"eos-{uuid.uuid4().hex[:8]}"
    processor = ExactlyOnceProcessor(kafka_settings, codec, group_id=group, transactional_id=f"{group}-0",
                                     inputs=[source], handler=handler, dlq_topic=dlq.name)
    processor.max_deferred_s = 600.0  # the age bound plays no part here
    quiet = [message_for(source, run_id="quiet") for _ in range(3)]
    producer.publish_many(source, quiet)
    producer.flush()
    handled = 0
    for _ in range(60):
        handled += processor.process_batch(max_messages=50, timeout_s=0.5)
        assert not processor.times.committed, "nothing written: no transaction ended"
        if handled == len(quiet):
            break
    assert handled == len(quiet)
    assert _committed(kafka_settings, group, source.name, 1)[(source.name, 0)] < 0, "the offsets wait"

    loud = message_for(source, run_id="loud")
    producer.publish(source, loud)
    producer.flush()
    while not processor.process_batch(max_messages=50, timeout_s=0.5):
        pass
    assert processor.times.committed, "a batch that writes commits at once"
    # The offsets of a committed transaction become readable once its markers are written (asynchronously).
    wait_until(lambda: _committed(kafka_settings, group, source.name, 1) == {(source.name, 0): 4},
               what="the deferred offsets committed with the write")
    reader = consumer_factory([sink], dlq)
    assert [d.message.trace_id for d in consume_until(reader, 1, timeout_s=20)] == [loud.event_id]

    more = message_for(source, run_id="quiet")
    producer.publish(source, more)
    producer.flush()
    while not processor.process_batch(max_messages=50, timeout_s=0.5):
        pass
    assert not processor.times.committed
    assert processor.process_batch(max_messages=50, timeout_s=0.1) == 0
    assert processor.times.committed, "idle: the deferred offsets commit"
    wait_until(lambda: _committed(kafka_settings, group, source.name, 1) == {(source.name, 0): 5},
               what="the deferred offsets committed when idle")
    processor.close()


def test_read_uncommitted_shows_aborted_writes_read_committed_hides_them(
    kafka_settings, codec, topic_factory, producer_factory
):
    sink = topic_factory("control.tamiyo.decisions", partitions=1)
    dlq = topic_factory("esper.dlq")
    txn = producer_factory(transactional_id=f"abort-{uuid.uuid4().hex[:8]}")
    txn.init_transactions()
    txn.begin_transaction()
    aborted = message_for(sink)
    txn.publish(sink, aborted)
    txn.flush()
    txn.abort_transaction()
    txn.begin_transaction()
    committed = message_for(sink)
    txn.publish(sink, committed)
    txn.commit_transaction()

    def read(isolation):
        consumer = OonaConsumer(
            kafka_settings, codec, group_id=f"iso-{uuid.uuid4().hex[:8]}", topics=[sink],
            dead_letters=producer_factory(), dlq_topic=dlq.name, config={"isolation.level": isolation},
        )
        try:
            return [d.message.event_id for d in consume_until(consumer, 2, timeout_s=5)]
        finally:
            consumer.close()

    assert read("read_committed") == [committed.event_id]
    assert read("read_uncommitted") == [aborted.event_id, committed.event_id]
