"""Per-record failure isolation: a record whose handling raises is dead-lettered and the consumer goes on.

The classification is pure; the processor and the consumer run against librdkafka's in-process
mock cluster (``test.mock.num.brokers``), so these tests need no broker. What the mock cannot
prove (committed offsets of a consumer group) is proved on a real broker in
``tests/integration/test_exactly_once.py``.
"""

from __future__ import annotations

import dataclasses
import time
import uuid

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from contracts.dead_letter import DLQ_HEADER_ERROR_TYPE, DLQ_HEADER_OFFSET, DLQ_HEADER_REASON
from services.core.errors import BrokerUnavailableError, DecodeError, DeliveryError, FatalError
from services.oona import clients
from services.oona.codec import SingleObjectCodec
from services.oona.consumer import OonaConsumer
from services.oona.isolation import failure_reason, is_record_failure, replay_skipping_failures
from services.oona.log_reader import RANGE_READER_CONFIG, ReadToEnds
from services.oona.producer import OonaProducer
from services.oona.topic_registry import topic_spec
from services.oona.transactions import ExactlyOnceProcessor
from tests.mock_cluster import mock_cluster
from tests.samples import message_for

TRANSIENT = KafkaException(KafkaError(KafkaError._TRANSPORT, "broker went away"))


# -- which exceptions are a record's fault -------------------------------------------------------
@pytest.mark.parametrize("exc", [
    ValueError("negative dimension"), IndexError("list index out of range"), StopIteration(), RecursionError(),
    MemoryError(), KeyError("x"), ZeroDivisionError(), DecodeError("bad bytes"), RuntimeError("bug"),
])
def test_exceptions_of_a_record_are_its_failure(exc):
    assert is_record_failure(exc)


@pytest.mark.parametrize("exc", [
    TRANSIENT, KafkaException(KafkaError(KafkaError._FENCED, "fenced", fatal=True)),
    KafkaException(KafkaError(KafkaError.INVALID_CONFIG, "bad")), DeliveryError("t", "refused"),
    FatalError("stop"), BrokerUnavailableError("localhost:9092"), KeyboardInterrupt(), SystemExit(1),
])
def test_errors_of_the_bus_and_the_process_are_never_a_record_failure(exc):
    assert not is_record_failure(exc)


def test_the_reason_names_the_exception_type_and_message_and_fits_a_header():
    assert failure_reason(ValueError("negative dimension -3")) == "ValueError: negative dimension -3"
    assert failure_reason(StopIteration()) == "StopIteration"
    assert len(failure_reason(ValueError("x" * 10_000))) == 4000


def test_a_replay_skips_the_records_that_fail_and_stops_for_bus_errors():
    seen = []

    def apply(n):
        if n == 2:
            raise IndexError("poison")
        seen.append(n)

    assert replay_skipping_failures(range(5), apply, "numbers") == 4
    assert seen == [0, 1, 3, 4]

    def broken(_):
        raise TRANSIENT

    with pytest.raises(KafkaException):
        replay_skipping_failures([1], broken, "numbers")


class _Record:
    def __init__(self, value: bytes) -> None:
        self._value = value

    def value(self):
        return self._value

    def topic(self):
        return "t"

    def partition(self):
        return 0

    def offset(self):
        return 7


class _Decoder:
    def decode(self, spec, value):
        if value == b"bug":
            raise OverflowError("int too big to convert")
        if value == b"bus":
            raise TRANSIENT
        return value.decode()


def test_a_view_skips_a_record_whatever_its_decoder_raised_but_not_a_bus_error():
    from services.urza.topic_view import decode_or_skip

    spec = topic_spec("library.kernels")
    assert decode_or_skip(_Decoder(), spec, _Record(b"ok")) == "ok"
    assert decode_or_skip(_Decoder(), spec, _Record(b"bug")) is None
    with pytest.raises(KafkaException):
        decode_or_skip(_Decoder(), spec, _Record(b"bus"))


# -- against librdkafka's mock cluster ----------------------------------------------------------
@pytest.fixture
def mock_settings():
    with mock_cluster(1, "isolation-tests") as settings:
        yield settings


def _spec(name):
    return dataclasses.replace(topic_spec(name), name=f"m{uuid.uuid4().hex[:8]}.{name}", partitions=1)


def _read(settings, topic, timeout_s=20.0):
    """Every committed record of ``topic``: read until each partition's position reaches its end."""
    consumer = clients.consumer(settings, RANGE_READER_CONFIG, {"group.id": f"r{uuid.uuid4().hex[:8]}"})
    partitions = [TopicPartition(topic, p, 0) for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions]
    # Ends: the high watermarks (every transaction of these tests has ended before its topic is read).
    progress = ReadToEnds({(topic, tp.partition): consumer.get_watermark_offsets(tp, timeout=10)[1]
                           for tp in partitions})
    consumer.assign(partitions)
    got, deadline = [], time.monotonic() + timeout_s
    try:
        while not progress.done:
            assert time.monotonic() < deadline, f"{topic} not read to its end within {timeout_s}s"
            got += [m for m in consumer.consume(100, 0.2) if m.error() is None]
            progress.advance(consumer)
    finally:
        consumer.close()
    return got


def _echo(out):
    def handler(delivered):
        yield out, out.message_type(sender_id="tests", topic=out.name, run_id=delivered.message.run_id,
                                    trace_id=delivered.message.event_id, payload=delivered.message.payload)
    return handler


@pytest.fixture
def pipeline(mock_settings):
    """Eight events on an input topic, a processor factory, and the topics it writes."""
    codec = SingleObjectCodec()
    source, out, dlq = _spec("telemetry.seed.health"), _spec("telemetry.seed.health"), _spec("esper.dlq")
    inputs = [message_for(source, run_id="r1") for _ in range(8)]  # one key: one partition, offsets 0..7
    producer = OonaProducer(mock_settings, codec)
    producer.publish_many(source, inputs)
    producer.flush()
    processors = []

    def make(handler, after_batch=None):
        group = f"g{uuid.uuid4().hex[:8]}"
        processor = ExactlyOnceProcessor(mock_settings, codec, group_id=group, transactional_id=group, inputs=[source],
                                         handler=handler, dlq_topic=dlq.name, after_batch=after_batch)
        processors.append(processor)
        return processor

    yield dataclasses.make_dataclass("Pipeline", ["settings", "source", "inputs", "out", "dlq", "make"])(
        mock_settings, source, inputs, out, dlq, make)
    for processor in processors:
        processor.close()


def _drain(processor, count, timeout_s=30.0):
    handled, deadline = 0, time.monotonic() + timeout_s
    while handled < count and time.monotonic() < deadline:
        handled += processor.process_batch(max_messages=50, timeout_s=0.5)
    return handled


def test_a_record_whose_handling_raises_is_dead_lettered_and_the_batch_commits(pipeline):
    poison, unencodable = pipeline.inputs[3], pipeline.inputs[5]
    echo = _echo(pipeline.out)

    def handler(delivered):
        for spec, message in echo(delivered):
            if delivered.message.event_id == unencodable.event_id:
                message = message.model_copy(update={"run_id": None})  # the output topic is keyed by run_id
            yield spec, message  # an output yielded before the failure must not escape either
        if delivered.message.event_id == poison.event_id:
            raise ValueError(f"cannot handle {poison.event_id}")

    processor = pipeline.make(handler)
    assert _drain(processor, len(pipeline.inputs)) == len(pipeline.inputs)  # no exception: it goes on
    assert processor.failed == 2

    traces = [SingleObjectCodec().decode(pipeline.out, m.value()).trace_id
              for m in _read(pipeline.settings, pipeline.out.name)]
    assert sorted(traces) == sorted(m.event_id for m in pipeline.inputs if m not in (poison, unencodable)), \
        "every other record's output, once"
    letters = [dict(m.headers()) for m in _read(pipeline.settings, pipeline.dlq.name)]
    assert [h[DLQ_HEADER_OFFSET] for h in letters] == [b"3", b"5"]
    assert letters[0][DLQ_HEADER_ERROR_TYPE] == b"ValueError"
    assert letters[0][DLQ_HEADER_REASON].decode() == f"ValueError: cannot handle {poison.event_id}"
    assert letters[1][DLQ_HEADER_ERROR_TYPE] == b"EncodeError"
    assert b"run_id is required" in letters[1][DLQ_HEADER_REASON]


def test_a_transient_broker_error_aborts_and_propagates_and_is_never_dead_lettered(pipeline):
    def handler(delivered):
        if delivered.message.event_id == pipeline.inputs[2].event_id:
            raise TRANSIENT
        yield from ()

    processor = pipeline.make(handler)
    with pytest.raises(KafkaException):
        _drain(processor, len(pipeline.inputs))
    assert processor.failed == 0
    assert processor.consumer.dead_lettered == 0


def test_after_batch_failing_is_logged_and_the_batch_still_commits(pipeline, caplog):
    calls = []

    def after_batch(batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("housekeeping bug")
        yield from ()

    processor = pipeline.make(_echo(pipeline.out), after_batch=after_batch)
    assert _drain(processor, len(pipeline.inputs)) == len(pipeline.inputs)
    processor.process_batch(max_messages=50, timeout_s=0.1)  # the hook runs again after the next batch
    assert processor.after_batch_failures == 1
    assert len(calls) >= 2
    assert "after_batch failed" in caplog.text
    assert len(_read(pipeline.settings, pipeline.out.name)) == len(pipeline.inputs)
    assert processor.consumer.dead_lettered == 0


def test_handle_isolated_dead_letters_the_record_and_lets_bus_errors_through(pipeline):
    codec = SingleObjectCodec()
    producer = OonaProducer(pipeline.settings, codec)
    consumer = OonaConsumer(pipeline.settings, codec, group_id=f"c{uuid.uuid4().hex[:8]}",
                            topics=[pipeline.source], dead_letters=producer, dlq_topic=pipeline.dlq.name)
    try:
        got, deadline = [], time.monotonic() + 20
        while len(got) < len(pipeline.inputs) and time.monotonic() < deadline:
            got += consumer.consume(50, 0.5)
        assert [d.offset for d in got] == list(range(8))
        results = [consumer.handle_isolated(d, lambda d: 1 / (d.offset - 4)) for d in got]
        assert [r is None for r in results] == [d.offset == 4 for d in got]
        with pytest.raises(KafkaException):
            consumer.handle_isolated(got[0], lambda d: (_ for _ in ()).throw(TRANSIENT))
        consumer.commit()
    finally:
        consumer.close()
    headers = dict(_read(pipeline.settings, pipeline.dlq.name)[0].headers())
    assert headers[DLQ_HEADER_ERROR_TYPE] == b"ZeroDivisionError"
    assert headers[DLQ_HEADER_REASON] == b"ZeroDivisionError: division by zero"
    assert headers[DLQ_HEADER_OFFSET] == b"4"

