"""A transactional call that does not return is given up, and the processor recovers with a new producer.

librdkafka's ``send_offsets_to_transaction`` can wait without end for a group coordinator after a
broker restart (README "Transactions after a broker restart"). ``BoundedCalls`` is tested with plain
functions; the processor against librdkafka's in-process mock cluster, with the real client's call
held on an event, as the bug holds it. The mock does not abort a fenced producer's transaction:
that outputs are written exactly once across a renewal is proved on a real broker, restarted under
the processor (tests/integration/test_transaction_recovery.py).
"""

from __future__ import annotations

import dataclasses
import threading
import uuid

import pytest
from confluent_kafka import KafkaError, KafkaException, Producer

from services.core.errors import ClientStuckError
from services.oona import clients, producer, transactions
from services.oona.codec import SingleObjectCodec
from services.oona.producer import OonaProducer
from services.oona.topic_registry import topic_spec
from services.oona.transactions import ExactlyOnceProcessor
from tests.mock_cluster import mock_cluster
from tests.samples import message_for
from tests.unit.test_failure_isolation import _drain, _echo, _read
from tests.waiting import wait_until

FATAL = KafkaException(KafkaError(KafkaError.INVALID_TXN_STATE, "invalid state", fatal=True))
FENCED = KafkaException(KafkaError(KafkaError._FENCED, "fenced by a newer producer", fatal=True))


# -- BoundedCalls --------------------------------------------------------------------------------
def test_a_bounded_call_returns_its_result_and_raises_its_own_exception():
    calls = clients.BoundedCalls("test", grace_s=5.0)
    assert calls.call("add", lambda: 1 + 1, 1.0) == 2
    with pytest.raises(KafkaException) as raised:
        calls.call("fails", lambda: (_ for _ in ()).throw(FATAL), 1.0)
    assert raised.value is FATAL
    assert calls.stuck is None
    thread = calls._thread
    calls.close()  # a client replaced without being stuck: its call thread ends
    wait_until(lambda: not thread.is_alive(), 10, "the call thread ended")


def test_a_call_blocked_past_its_timeout_and_grace_is_given_up_and_so_is_every_later_call():
    calls = clients.BoundedCalls("test", grace_s=0.05)
    release, ran = threading.Event(), []
    with pytest.raises(ClientStuckError, match="send_offsets_to_transaction still blocked"):
        calls.call("send_offsets_to_transaction", release.wait, 0.05)
    assert calls.stuck == "send_offsets_to_transaction"
    with pytest.raises(ClientStuckError, match="abort_transaction after send_offsets_to_transaction"):
        calls.call("abort_transaction", lambda: ran.append(1), 10.0)
    assert ran == [], "nothing runs behind a stuck call"
    thread = calls._thread
    assert thread is not None and thread.daemon, "a stuck call must not hold the process at exit"
    release.set()  # the blocked call returns at last: its thread ends
    wait_until(lambda: not thread.is_alive(), 10, "the call thread ended")


# -- the processor against the mock cluster -------------------------------------------------------
@pytest.fixture
def mock_settings():
    with mock_cluster(1, "recovery-tests") as settings:
        yield settings


@pytest.fixture
def short_timeouts(monkeypatch):
    monkeypatch.setattr(transactions, "TXN_CALL_TIMEOUT_S", 0.5)
    monkeypatch.setattr(producer, "TXN_CALL_GRACE_S", 0.5)


class _Holds:
    """The real client, with some of its transactional calls held (until ``release``) or failing."""

    def __init__(self, client: Producer, *, hold: str = "", fail: dict[str, Exception] | None = None) -> None:
        self._client, self._hold, self._fail = client, hold, fail or {}
        self.release = threading.Event()

    def __getattr__(self, name: str):
        call = getattr(self._client, name)
        if name == self._hold:
            def held(*args):
                self.release.wait()
                return call(*args)
            return held
        if name in self._fail:
            def failing(*args):
                raise self._fail[name]
            return failing
        return call


def _pipeline(settings):
    codec = SingleObjectCodec()
    tag = uuid.uuid4().hex[:8]
    source, out, dlq = (dataclasses.replace(topic_spec(name), name=f"m{tag}.{i}.{name}", partitions=1)
                        for i, name in enumerate(("telemetry.seed.health", "telemetry.seed.health", "esper.dlq")))
    inputs = [message_for(source, run_id="r1") for _ in range(6)]
    feeder = OonaProducer(settings, codec)
    feeder.publish_many(source, inputs)
    feeder.flush()
    processor = ExactlyOnceProcessor(settings, codec, group_id=f"g{tag}", transactional_id=f"g{tag}", inputs=[source],
                                     handler=_echo(out), dlq_topic=dlq.name)
    return processor, inputs, out


def _outputs(settings, out):
    return sorted(SingleObjectCodec().decode(out, m.value()).trace_id for m in _read(settings, out.name))


def test_a_stuck_send_offsets_is_given_up_the_producer_renewed_and_every_input_handled_again(
        mock_settings, short_timeouts):
    processor, inputs, out = _pipeline(mock_settings)
    held = _Holds(processor.producer._producer, hold="send_offsets_to_transaction")
    processor.producer._producer = held
    try:
        with pytest.raises(ClientStuckError):
            _drain(processor, len(inputs))
        # The recovery path: the abort could not run behind the stuck call, so a new producer with the same
        # transactional id was initialised (fencing the old one) and the input rewound to the committed offsets.
        assert processor.recoveries == 1 and processor.producer.renewals == 1
        assert processor.producer._producer is not held and not processor.producer.stuck
        assert _drain(processor, len(inputs)) == len(inputs), "every input handled again after the rewind"
    finally:
        held.release.set()  # the old client's call goes on at last, as a fenced producer's
        processor.close()
    # The mock cluster does not abort a fenced producer's transaction, so "once" is proved on a real broker
    # (tests/integration/test_transaction_recovery.py); here: the renewed producer committed every output.
    assert set(_outputs(mock_settings, out)) == {m.event_id for m in inputs}


def test_an_abort_that_fails_fatally_renews_the_producer_and_the_service_goes_on(mock_settings, short_timeouts):
    processor, inputs, out = _pipeline(mock_settings)
    processor.producer._producer = _Holds(processor.producer._producer,
                                          fail={"commit_transaction": FATAL, "abort_transaction": FATAL})
    try:
        with pytest.raises(KafkaException):
            _drain(processor, len(inputs))
        assert processor.recoveries == 1 and processor.producer.renewals == 1
        assert _drain(processor, len(inputs)) == len(inputs)
    finally:
        processor.close()
    assert set(_outputs(mock_settings, out)) == {m.event_id for m in inputs}


def test_a_fenced_producer_is_not_renewed_the_fencing_propagates(mock_settings, short_timeouts):
    processor, inputs, _ = _pipeline(mock_settings)
    processor.producer._producer = _Holds(processor.producer._producer, fail={"commit_transaction": FENCED})
    try:
        with pytest.raises(KafkaException) as raised:
            _drain(processor, len(inputs))
        assert clients.is_fenced(raised.value)
        assert processor.recoveries == 0 and processor.producer.renewals == 0, \
            "a newer instance owns the transactional id: fencing it back would make two writers"
    finally:
        processor.producer._producer = processor.producer._producer._client
        processor.close()


def test_a_deferred_rewind_is_done_by_the_next_consume_and_replaced_by_a_rewind_to_the_beginning(mock_settings):
    processor, inputs, _ = _pipeline(mock_settings)
    consumer = processor.consumer
    try:
        got = []
        wait_until(lambda: got.extend(consumer.consume(50, 0.2)) or len(got) == len(inputs), 30, "the inputs read")
        consumer.rewind_to_committed(defer=True)  # nothing committed: back to the beginning, on the next consume
        again = []
        wait_until(lambda: again.extend(consumer.consume(50, 0.2)) or len(again) == len(inputs), 30,
                   "the inputs read again")
        assert [d.offset for d in again] == [d.offset for d in got]
        consumer.rewind_to_committed(defer=True)
        consumer.rewind_to_beginning()  # a projection rebuilding itself: the pending rewind is moot
        assert not consumer._rewind_pending
    finally:
        processor.close()


class _CannotReadCommitted:
    """A consumer client whose ``committed`` times out, as one whose group coordinator was lost does."""

    def __init__(self, client) -> None:
        self._client = client

    def committed(self, *args, **kwargs):
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "Failed to get committed offsets: Local: Timed out"))

    def __getattr__(self, name: str):
        return getattr(self._client, name)


def test_a_rewind_the_consumer_cannot_do_reads_the_committed_offsets_with_a_fresh_client(mock_settings):
    processor, inputs, _ = _pipeline(mock_settings)
    consumer = processor.consumer
    try:
        got = []
        wait_until(lambda: got.extend(consumer.consume(50, 0.2)) or len(got) == len(inputs), 30, "the inputs read")
        consumer.commit()  # the offsets stand at the end (the mock keeps no transactional offset commit)
        consumer._consumer = _CannotReadCommitted(consumer._consumer)
        consumer.rewind_to_beginning()
        consumer.rewind_to_committed()
        assert not consumer._rewind_pending, "rewound from the fresh client's offsets"
        assert consumer.consume(50, 0.5) == [], "back at the committed offsets: nothing is read again"
    finally:
        consumer._consumer = consumer._consumer._client
        processor.close()


def test_a_commit_waiting_for_its_coordinator_is_logged_and_given_up_past_its_timeout(mock_settings, monkeypatch,
                                                                                       caplog):
    """librdkafka's synchronous commit defers itself while no group coordinator is known, without a
    limit: the consumer says so while it waits and gives up at its timeout instead of hanging a run."""
    from services.oona import consumer as consumer_module
    from services.oona.consumer import OonaConsumer

    monkeypatch.setattr(consumer_module, "COMMIT_WAIT_LOG_S", 0.05)
    monkeypatch.setattr(consumer_module, "COMMIT_GRACE_S", 0.05)
    codec = SingleObjectCodec()
    source = dataclasses.replace(topic_spec("telemetry.seed.health"), name=f"commit-{uuid.uuid4().hex[:8]}")
    consumer = OonaConsumer(mock_settings, codec, group_id=f"c{uuid.uuid4().hex[:8]}", topics=[source],
                            dead_letters=OonaProducer(mock_settings, codec))
    release = threading.Event()

    class HeldCommits:
        def __init__(self, real):
            self.real = real

        def commit(self, **kwargs):
            release.wait()  # as librdkafka's commit waits for a coordinator that does not come

        def __getattr__(self, name):
            return getattr(self.real, name)

    real = consumer._consumer
    consumer._consumer = HeldCommits(real)
    try:
        with caplog.at_level("WARNING"), pytest.raises(ClientStuckError, match="commit of group"):
            consumer.commit(timeout_s=0.3)
        assert "commit waiting for the group coordinator" in caplog.text
        with pytest.raises(ClientStuckError):  # and it is not called again behind the blocked one
            consumer.commit(timeout_s=0.3)
    finally:
        release.set()
        consumer._consumer = real
        consumer.close()


COORDINATOR_MOVED = KafkaException(KafkaError(KafkaError.COORDINATOR_NOT_AVAILABLE,
                                              "Failed to add offsets to transaction: Coordinator not available"))


@pytest.mark.parametrize("stateless", [True, False])
def test_a_stateless_handlers_batch_aborted_on_a_broker_error_is_handled_again_without_ending_the_service(
        mock_settings, short_timeouts, stateless):
    """A coordinator moving mid-commit (seen when the leaders' broker of a 3-node cluster was killed) aborts
    the batch. A stateless handler's service (``on_abort=nothing_to_undo``) goes on and reads the batch again;
    without ``on_abort`` (a state that cannot be put back) the error propagates: the service rebuilds or restarts."""
    processor, inputs, out = _pipeline(mock_settings)
    processor.on_abort = transactions.nothing_to_undo if stateless else None
    real = processor.producer._producer
    processor.producer._producer = _Holds(real, fail={"send_offsets_to_transaction": COORDINATOR_MOVED})
    try:
        if stateless:
            wait_until(lambda: processor.process_batch(max_messages=50, timeout_s=0.5) == 0
                       and processor.batches_aborted > 0, 30, "a batch aborted")
        else:
            with pytest.raises(KafkaException):
                _drain(processor, len(inputs))
        processor.producer._producer = real  # the coordinator is back
        assert _drain(processor, len(inputs)) == len(inputs), "every input handled again after the abort"
    finally:
        processor.close()
    assert sorted(_outputs(mock_settings, out)) == sorted(m.event_id for m in inputs)
