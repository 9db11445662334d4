"""``OffsetReader``: a long-lived component's end offsets through a partition leader's loss.

librdkafka's ListOffsets waits, for its whole timeout, on the leader its client cached, even after
that broker died and another was elected (seen on the 3-node cluster, README "On the local 3-node
cluster"). The reader makes each attempt short and replaces the client after a failed one. The mock
cluster (``test.mock.num.brokers``) cannot kill one of its brokers, so the stale client is a
stand-in here whose request never completes; the real case is ``tests/e2e/test_cluster_faults.py``.
"""

from __future__ import annotations

import logging
import time
import uuid
from concurrent.futures import Future

import pytest
from confluent_kafka import KafkaError, KafkaException

from services.oona import admin, clients
from services.oona.admin import OffsetReader
from services.oona.settings import KafkaSettings
from tests.mock_cluster import mock_cluster


class _Answer:
    def __init__(self, offset: int) -> None:
        self.offset = offset


class _Client:
    """An admin client whose ListOffsets either answers ``offset`` or never completes (its leader is dead)."""

    def __init__(self, offset: int | None) -> None:
        self.offset = offset
        self.timeouts: list[float] = []

    def list_offsets(self, wanted, isolation_level, request_timeout):
        self.timeouts.append(request_timeout)
        futures = {}
        for tp in wanted:
            future: Future = Future()
            if self.offset is not None:
                future.set_result(_Answer(self.offset))
            futures[tp] = future
        return futures


@pytest.fixture
def built(monkeypatch):
    """The clients the reader builds, in order; each is a stale one until ``fresh_from`` of them were built."""
    made: list[_Client] = []
    state = {"fresh_from": 1}

    def build(_settings, *_overrides):
        made.append(_Client(None if len(made) < state["fresh_from"] else 7))
        return made[-1]

    monkeypatch.setattr(clients, "admin", build)
    monkeypatch.setattr(OffsetReader, "ATTEMPT_S", 0.05)
    monkeypatch.setattr(OffsetReader, "ATTEMPT_MAX_S", 0.1)
    return made, state


def test_a_client_stuck_on_a_dead_leader_is_replaced_after_one_short_attempt(built, caplog):
    made, _ = built
    caplog.set_level(logging.INFO, logger=admin.__name__)
    reader = OffsetReader(KafkaSettings())
    assert reader.end_offsets([("t", 0), ("t", 1)], timeout_s=30) == {("t", 0): 7, ("t", 1): 7}
    assert len(made) == 2, "the stale client is dropped, the fresh one answers"
    assert made[0].timeouts == [OffsetReader.ATTEMPT_S], "one short attempt, not the call's 30 s"
    assert "end offsets answered after" in caplog.text and "1 failed attempt(s)" in caplog.text

    assert reader.end_offsets([("t", 0)], timeout_s=30) == {("t", 0): 7}
    assert len(made) == 2 and len(made[1].timeouts) == 2, "a client that answers is kept"


@pytest.mark.parametrize("slow_s, warned", [(60.0, False), (0.0, True)])
def test_failures_are_a_warning_only_once_the_call_has_been_failing_slow_s(built, caplog, monkeypatch, slow_s, warned):
    """A blip (a slow attempt on a loaded machine) stays out of a one-shot command's stderr; a caller
    blocked through an outage says so, once, SLOW_S in."""
    made, state = built
    state["fresh_from"] = 3
    monkeypatch.setattr(OffsetReader, "SLOW_S", slow_s)
    caplog.set_level(logging.INFO, logger=admin.__name__)
    assert OffsetReader(KafkaSettings()).end_offsets([("t", 0)], timeout_s=30) == {("t", 0): 7}
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    if warned:
        assert len(warnings) == 2 and "transient Kafka error" in warnings[0] and "answered after" in warnings[1]
        assert not any("transient Kafka error" in m for m in infos), "the warning is said once, not per failure"
    else:
        assert warnings == [] and sum("transient Kafka error" in m for m in infos) == 3
        assert any("answered after" in m and "3 failed attempt(s)" in m for m in infos)


def test_attempts_grow_to_their_cap_on_new_clients_until_the_deadline(built):
    made, state = built
    state["fresh_from"] = 10**6  # every client stale: the leader never comes back
    started = time.monotonic()
    with pytest.raises(KafkaException) as raised:
        OffsetReader(KafkaSettings()).end_offsets([("t", 0)], timeout_s=1.0)
    assert raised.value.args[0].code() == KafkaError._TIMED_OUT
    assert time.monotonic() - started < 1.0 + OffsetReader.ATTEMPT_MAX_S + 2, "bounded by the call's timeout"
    timeouts = [c.timeouts[0] for c in made]
    assert all(len(c.timeouts) == 1 for c in made), "one attempt per client"
    assert timeouts[:3] == pytest.approx([0.05, 0.075, 0.1]) and max(timeouts) == pytest.approx(0.1)


def test_a_non_transient_error_is_not_retried(monkeypatch):
    class Refusing(_Client):
        def list_offsets(self, wanted, isolation_level, request_timeout):
            raise KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "not allowed"))

    made: list[_Client] = []
    monkeypatch.setattr(clients, "admin", lambda *_: made.append(Refusing(None)) or made[-1])
    with pytest.raises(KafkaException):
        OffsetReader(KafkaSettings()).end_offsets([("t", 0)], timeout_s=30)
    assert len(made) == 1


# -- against librdkafka's mock cluster ------------------------------------------------------------------
@pytest.fixture
def mock_settings():
    with mock_cluster(3, "reader-tests") as settings:
        yield settings


def test_end_offsets_of_a_real_client_and_one_list_offsets_per_attempt(mock_settings):
    topic = f"r{uuid.uuid4().hex[:8]}"
    producer = clients.producer(mock_settings, {"acks": "all"})
    for i in range(5):
        producer.produce(topic, value=b"v", partition=i % 2)
    assert producer.flush(10) == 0
    reader = OffsetReader(mock_settings)
    partitions = reader.partitions_of([topic])
    assert sorted(partitions) == [(topic, p) for p in range(len(partitions))] and len(partitions) >= 2
    ends = reader.end_offsets(partitions, committed_only=False, timeout_s=20)
    assert ends[(topic, 0)] == 3 and ends[(topic, 1)] == 2
    client = clients.admin(mock_settings)
    assert admin.list_end_offsets(client, [(topic, 0)], False, 10) == {(topic, 0): 3}
    assert admin.list_end_offsets(client, [], False, 10) == {}
