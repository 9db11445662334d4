"""Karn stays up through passing broker errors, against librdkafka's in-process mock cluster.

Its generator folds every field report it reads, so a batch aborted on a broker error (a coordinator
moving after the leaders' broker died) must leave the generator as it was at the last commit: when the
batch is read again, its reports count once and the candidates it proposed, never published, are
proposed again. At start, a group coordinator that does not answer yet (a fresh broker) is asked again.
"""

from __future__ import annotations

import uuid
from collections import Counter

import pytest
from confluent_kafka import KafkaError, KafkaException

from contracts import FieldReport, FieldReportOutcome, TopicName
from services.blueprints.starter import mlp_adapter
from services.karn.generator import Generator
from services.karn.service import Karn
from services.oona import clients
from services.oona.codec import SingleObjectCodec
from services.oona.producer import OonaProducer
from services.oona.topic_registry import topic_spec
from tests.mock_cluster import mock_cluster
from tests.unit.test_failure_isolation import _read
from tests.unit.test_transaction_recovery import COORDINATOR_MOVED, _Holds, short_timeouts  # noqa: F401 - a fixture
from tests.waiting import wait_until

NOT_COORDINATOR = KafkaException(KafkaError(KafkaError.NOT_COORDINATOR,
                                            "Failed to get committed offsets: Broker: Not coordinator"))


@pytest.fixture
def karn_settings():
    """Mock-cluster settings under a fresh topic prefix (the mock creates a topic when it is first written)."""
    with mock_cluster(1, "karn-tests") as settings:
        yield settings.model_copy(update={"topic_prefix": f"k{uuid.uuid4().hex[:8]}."})


def _fossilized(settings, blueprint_id):
    reports = topic_spec(TopicName.INNOVATION_FIELD_REPORTS.value, settings.topic_prefix)
    message = reports.message_type(sender_id="tests", topic=reports.name, run_id="r1", payload=FieldReport(
        layer_id=1, seed_idx=0, blueprint_id=blueprint_id, kernel_id="k-1", pre_metric=0.4, post_metric=0.7,
        outcome=FieldReportOutcome.FOSSILIZED))
    producer = OonaProducer(settings, SingleObjectCodec())
    producer.publish(reports, message)
    producer.flush()
    return message


def _children(settings, report_id):
    submitted = topic_spec(TopicName.COMPILATION_BLUEPRINT_SUBMITTED.value, settings.topic_prefix)
    codec = SingleObjectCodec()
    return Counter(m.payload.blueprint_id for m in (codec.decode(submitted, r.value()) for r in
                                                    _read(settings, submitted.name)) if m.trace_id == report_id)


@pytest.mark.usefixtures("short_timeouts")
def test_a_batch_aborted_on_a_broker_error_is_read_again_from_the_state_of_the_last_commit(karn_settings):
    parent = mlp_adapter(2, 8, 32)
    report = _fossilized(karn_settings, parent.blueprint_id)
    karn = Karn(karn_settings, SingleObjectCodec(), starter=[parent], worker="a")
    expected = Generator()
    expected.know(parent)
    expected.record(report.payload)
    proposals = {bp.blueprint_id for bp in expected.propose(report.payload, rng_seed=report.event_id)}
    assert proposals, "the report must make Karn propose, or the test proves nothing"

    real = karn.processor.producer._producer
    karn.processor.producer._producer = _Holds(real, fail={"send_offsets_to_transaction": COORDINATOR_MOVED})
    try:
        # The old Karn let the error out here: its process ended and its supervisor restarted it.
        wait_until(lambda: karn.step() == 0 and karn.processor.batches_aborted > 0, 30, "a batch aborted")
        karn.processor.producer._producer = real  # the coordinator is back
        wait_until(lambda: karn.step() >= 0 and karn.processor.times.committed, 30, "the report handled again")
        score = karn.generator.scores[parent.blueprint_id]
    finally:
        karn.close()
    assert (score.fossilized, score.culled) == (1, 0), "the report of the aborted batch counted once"
    assert _children(karn_settings, report.event_id) == dict.fromkeys(proposals, 1), \
        "the aborted batch's candidates proposed again, each published once"


def test_karn_starts_when_the_group_coordinator_does_not_answer_at_first(karn_settings, monkeypatch):
    """As on a fresh broker: the first look-up of the group's committed offsets fails with NOT_COORDINATOR."""
    made = clients.consumer
    failures = []

    class NotCoordinatorAtFirst:
        def __init__(self, consumer):
            self._consumer = consumer

        def committed(self, *args, **kwargs):
            if not failures:
                failures.append(NOT_COORDINATOR)
                raise NOT_COORDINATOR
            return self._consumer.committed(*args, **kwargs)

        def __getattr__(self, name):
            return getattr(self._consumer, name)

    _fossilized(karn_settings, "bp-any")
    monkeypatch.setattr(clients, "consumer", lambda *args, **kwargs: NotCoordinatorAtFirst(made(*args, **kwargs)))
    karn = Karn(karn_settings, SingleObjectCodec(), starter=[mlp_adapter(2, 8, 32)], worker="a")
    karn.close()
    assert failures == [NOT_COORDINATOR], "the start met the error and went on"
