"""Consume-transform-produce in Kafka transactions: all of a batch or none of it."""

from __future__ import annotations

import uuid

import pytest

from contracts import AdaptationDecision, AdaptationType
from services.oona.consumer import OonaConsumer
from services.oona.transactions import ExactlyOnceProcessor
from tests.integration.conftest import consume_until
from tests.samples import message_for


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
        if calls["n"] == 5:
            raise RuntimeError("crash in the middle of a batch")
        return handler(delivered)

    processor = ExactlyOnceProcessor(
        kafka_settings, codec, group_id=group, transactional_id=f"{group}-0", inputs=[source], handler=flaky,
        dlq_topic=dlq.name,
    )
    with pytest.raises(RuntimeError, match="crash in the middle"):
        while True:
            processor.process_batch(max_messages=50, timeout=1.0)
    processor.close()

    # A restarted instance (same transactional id fences the old one) finishes the job.
    processor = ExactlyOnceProcessor(
        kafka_settings, codec, group_id=group, transactional_id=f"{group}-0", inputs=[source], handler=handler,
        dlq_topic=dlq.name,
    )
    handled = 0
    for _ in range(30):
        handled += processor.process_batch(max_messages=50, timeout=0.5)
        if handled >= len(inputs):
            break
    processor.close()

    reader = consumer_factory([sink], dlq)  # read_committed: aborted outputs are invisible
    got = consume_until(reader, len(inputs), timeout_s=20)
    got += reader.consume(500, 2.0)  # anything extra would be a duplicate
    traces = [d.message.trace_id for d in got]
    assert sorted(traces) == sorted(m.event_id for m in inputs), "each input decided exactly once"
    assert len(traces) == len(set(traces))


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
