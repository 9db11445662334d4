"""A transactional consume-transform-produce loop rides out restarts of its only broker (kill -9, then a
clean stop): it commits again once the broker is back, no transactional call outlives its timeout by
more than the grace, and every input has exactly one output (read_committed).

The broker is the test's own (``ESPER_TEST_RESTART_BROKER_PORT``), not the session's: it is restarted.
Before librdkafka's re-bootstrap was turned off (``metadata.recovery.strategy=none``) and the calls
were bounded, ``send_offsets_to_transaction`` blocked past its timeout after about one restart in three
(README "Transactions after a broker restart").
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable

import pytest
from confluent_kafka import TopicPartition

from contracts import AdaptationDecision, AdaptationType
from services.core.errors import FatalError
from services.core.paths import REPO_ROOT
from services.oona import clients, producer, transactions
from services.oona.admin import OffsetReader, end_offsets, ensure_topics
from services.oona.codec import SingleObjectCodec
from services.oona.local_broker import LocalBrokerConfig, LocalKafka
from services.oona.log_reader import RANGE_READER_CONFIG
from services.oona.producer import OonaProducer
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import topic_spec
from services.oona.transactions import ExactlyOnceProcessor
from tests.samples import message_for
from tests.waiting import wait_until

PORT = int(os.environ.get("ESPER_TEST_RESTART_BROKER_PORT", "19192"))
TXN_CALLS = ("init_transactions", "begin_transaction", "send_offsets_to_transaction", "commit_transaction",
             "abort_transaction")


class Service:
    """The processor in a loop on its own thread, as a service runs it: an error of a batch is logged and the
    loop goes on (the processor aborted and rewound, or renewed its producer); a FatalError ends it."""

    def __init__(self, make: Callable[[], ExactlyOnceProcessor]) -> None:
        self.processor = make()
        self.calls: list[tuple[str, float, float]] = []  # name, timeout given, seconds taken
        self.errors: Counter[str] = Counter()
        self.commits = 0
        self.fatal: BaseException | None = None
        self.stop = threading.Event()
        for name in TXN_CALLS:
            setattr(self.processor.producer, name, self._timed(name, getattr(self.processor.producer, name)))
        self.thread = threading.Thread(target=self._run, name="service", daemon=True)
        self.thread.start()

    def _timed(self, name, call):
        def timed(*args):
            timeout = next((a for a in args if isinstance(a, float)), 30.0 if name != "begin_transaction" else 0.0)
            start = time.monotonic()
            try:
                result = call(*args)
            finally:
                self.calls.append((name, timeout, time.monotonic() - start))
            self.commits += name == "commit_transaction"
            return result
        return timed

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.processor.process_batch(max_messages=100, timeout_s=0.2)
            except FatalError as exc:
                self.fatal = exc
                return
            except Exception as exc:
                if clients.is_fenced(exc):
                    self.fatal = exc
                    return
                self.errors[type(exc).__name__] += 1


def _committed(settings, group, parts):
    """The group's committed offsets, read by a fresh client (stable ones: the service's are all final)."""
    return OffsetReader(settings).committed(group, parts)


def _read_all(settings, spec):
    parts = [(spec.name, p) for p in range(spec.partitions)]
    ends = end_offsets(clients.admin(settings), parts)
    consumer = clients.consumer(settings, RANGE_READER_CONFIG, {"group.id": f"read-{uuid.uuid4().hex[:6]}"})
    consumer.assign([TopicPartition(t, p, 0) for t, p in parts])
    got = []
    try:
        def at_ends():
            got.extend(m for m in consumer.consume(500, 0.2) if m.error() is None)
            return all(tp.offset >= ends[(tp.topic, tp.partition)] or ends[(tp.topic, tp.partition)] == 0
                       for tp in consumer.position([TopicPartition(t, p) for t, p in parts]))
        wait_until(at_ends, 120, f"{spec.name} read to its end")
    finally:
        consumer.close()
    return got


@pytest.mark.timeout(900)  # its own bounded waits: two broker restarts on a loaded machine
def test_a_transactional_loop_rides_out_broker_restarts_with_every_output_once(tmp_path):
    broker = LocalKafka(LocalBrokerConfig(state_dir=tmp_path / "broker", cache_dir=REPO_ROOT / ".cache", port=PORT,
                                          controller_port=PORT + 1, heap="512m", start_timeout_s=180))
    broker.start()
    try:
        _ride_out_restarts(broker)
    finally:
        broker.stop()


def _ride_out_restarts(broker: LocalKafka) -> None:
    settings = KafkaSettings(bootstrap_servers=broker.cfg.bootstrap_servers, client_id="txn-recovery",
                             connect_timeout_s=60)
    codec = SingleObjectCodec()
    tag = uuid.uuid4().hex[:6]
    source = dataclasses.replace(topic_spec("telemetry.seed.health"), name=f"r{tag}.in", partitions=3)
    sink = dataclasses.replace(topic_spec("control.tamiyo.decisions"), name=f"r{tag}.out", partitions=3)
    dlq = dataclasses.replace(topic_spec("esper.dlq"), name=f"r{tag}.dlq")
    ensure_topics(settings, [source, sink, dlq])

    def decide(delivered):
        health = delivered.message.payload
        decision = AdaptationDecision(
            decision_id=f"d-{delivered.message.event_id}", layer_name=health.layer_name or "l",
            adaptation_type=AdaptationType.NO_OP, confidence=0.5, urgency=health.health_score, epoch=health.epoch)
        yield sink, sink.message_type(sender_id="tests", topic=sink.name, run_id=delivered.message.run_id,
                                      trace_id=delivered.message.event_id, payload=decision)

    group = f"r{tag}"
    service = Service(lambda: ExactlyOnceProcessor(settings, codec, group_id=group, transactional_id=group,
                                                   inputs=[source], handler=decide, dlq_topic=dlq.name))
    fed = threading.Event()  # set: the input stops

    def feed():  # a trickle of input through every fault (60 events/s), as a training run's telemetry
        feeder = OonaProducer(settings, codec)
        while not fed.wait(0.05):  # the pace of a load generator, not a synchronisation
            feeder.publish_many(source, [message_for(source, run_id=f"run-{i}") for i in range(3)])
            feeder.poll(0)
        feeder.flush(300)

    feeder = threading.Thread(target=feed, name="feeder", daemon=True)
    feeder.start()
    # How long the service may take to commit again once the broker answers: a call given up (its timeout and
    # grace), the abort, the producer's renewal and a rewind, each bounded the same way, twice over.
    call_bound_s = transactions.TXN_CALL_TIMEOUT_S + producer.TXN_CALL_GRACE_S
    resume_bound_s = 2 * 4 * call_bound_s
    resumed_after = {}
    try:
        for fault in ("kill-9", "stop"):
            before = service.commits
            wait_until(lambda before=before: service.commits >= before + 3 or service.fatal, 120,
                       "commits before the fault")
            assert service.fatal is None, service.fatal
            if fault == "kill-9":
                broker.kill()
            else:
                broker.stop()
            broker.start()
            up, at_restart = time.monotonic(), service.commits
            wait_until(lambda at_restart=at_restart: service.commits > at_restart or service.fatal, resume_bound_s,
                       f"a commit after the broker's {fault} and restart")
            assert service.fatal is None, service.fatal
            resumed_after[fault] = round(time.monotonic() - up, 1)
        fed.set()
        feeder.join(330)
        parts = [(source.name, p) for p in range(source.partitions)]
        ends = end_offsets(clients.admin(settings), parts)
        seen = {}

        def caught_up():
            # A partition no input went to (the keys hash to two of three) has no committed offset: -1001.
            seen.update({tp: max(offset, 0) for tp, offset in _committed(settings, group, parts).items()})
            return seen == ends or service.fatal
        try:
            wait_until(caught_up, 300, "the service caught up with every input")
        except AssertionError:
            raise AssertionError(f"committed {seen}, ends {ends}, errors {dict(service.errors)}") from None
    finally:
        fed.set()
        service.stop.set()
        service.thread.join(120)
        service.processor.close()
    inputs = {codec.decode(source, m.value()).event_id for m in _read_all(settings, source)}
    outputs = Counter(codec.decode(sink, m.value()).trace_id for m in _read_all(settings, sink))
    longest = max(service.calls, key=lambda c: c[2])
    renewed = service.processor.producer
    print(f"inputs={len(inputs)} outputs={sum(outputs.values())} commits={service.commits} "
          f"committed again after the broker was up (s): {resumed_after}; errors: {dict(service.errors)}; "
          f"producers renewed: {renewed.renewals} (still blocked: {renewed.blocked_clients}); "
          f"longest call: {longest[0]} {longest[2]:.1f}s")
    assert service.fatal is None, service.fatal
    assert len(inputs) > 0 and set(outputs) == inputs, "every input has its output"
    assert [t for t, n in outputs.items() if n > 1] == [], "no output twice"
    # No transactional call outlived its timeout by more than the grace: a blocked one was given up.
    over = [(name, timeout, round(took, 1)) for name, timeout, took in service.calls
            if took > timeout + 2 * producer.TXN_CALL_GRACE_S]
    assert over == []
