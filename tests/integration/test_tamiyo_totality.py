"""Tamiyo on the real broker stays total and bounded: its own decisions topic holding bytes that are
not decisions, runs that finished or failed, a long history of past decisions.

The service is stepped in the test's thread (no background loop), so each test can look at its
state between steps.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from confluent_kafka import OFFSET_BEGINNING

from contracts import AdaptationDecision, AdaptationType, SessionStatus, TopicName
from services.core.errors import DecodeError, KafkaClientError
from services.oona import clients
from services.oona.admin import end_offsets, partitions_of
from services.oona.codec import SingleObjectCodec
from services.oona.log_reader import read_range
from services.oona.producer import OonaProducer
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import topic_spec
from services.tamiyo.service import Tamiyo
from tests.integration.test_tamiyo_recovery import publish_runs
from tests.tamiyo_events import epoch_event, health, plateau_run, session

SESSIONS = TopicName.TRAINING_SESSIONS.value
HEALTH = TopicName.TELEMETRY_SEED_HEALTH.value
EPOCHS = TopicName.SYSTEM_EVENTS_EPOCH.value


def step_until(service: Tamiyo, condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        service.step()
        if condition():
            return
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}; stats {service.stats()}")


def dead_letters(kafka: KafkaSettings) -> list:
    """Every committed record of the DLQ, raw (headers hold source and reason)."""
    name = topic_spec(TopicName.DLQ.value, kafka.topic_prefix).name
    admin = clients.admin(kafka)
    ends = end_offsets(admin, partitions_of(admin, [name]))
    return read_range(kafka, {key: (OFFSET_BEGINNING, end) for key, end in ends.items()})


def publish(kafka: KafkaSettings, run_id: str, events: list, tag: str) -> None:
    producer = OonaProducer(kafka, SingleObjectCodec())
    for i, (topic, payload) in enumerate(events):
        spec = topic_spec(topic, kafka.topic_prefix)
        producer.publish(spec, spec.message_type(event_id=f"{run_id}-{tag}-{i}", sender_id="tests", topic=spec.name,
                                                 run_id=run_id, payload=payload))
    producer.flush()


def decisions_on_log(kafka: KafkaSettings) -> list:
    """The committed decisions on the log (records that are not decisions left out)."""
    spec = topic_spec(TopicName.CONTROL_TAMIYO_DECISIONS.value, kafka.topic_prefix)
    admin = clients.admin(kafka)
    ends = end_offsets(admin, partitions_of(admin, [spec.name]))
    codec, found = SingleObjectCodec(), []
    for msg in read_range(kafka, {key: (OFFSET_BEGINNING, end) for key, end in ends.items()}):
        try:
            found.append(codec.decode(spec, msg.value()))
        except DecodeError:
            continue
    return found


def header(msg, name: str) -> str:
    return dict(msg.headers() or {}).get(name, b"").decode()


def past_decision(run_id: str, epoch: int) -> AdaptationDecision:
    return AdaptationDecision(
        decision_id=f"{run_id}-past-{epoch}",
        layer_name="-",
        adaptation_type=AdaptationType.NO_OP,
        confidence=1.0,
        urgency=0.0,
        epoch=epoch,
        policy_version="older",
        metadata={"command_id": "", "action": "", "family": ""},
    )  # as v1 wrote it


def test_undecodable_records_on_its_decisions_topic_are_dead_lettered_once_and_skipped(esper_settings):
    kafka = esper_settings.kafka
    decisions = topic_spec(TopicName.CONTROL_TAMIYO_DECISIONS.value, kafka.topic_prefix)
    run_id = f"dl-{uuid.uuid4().hex[:6]}"
    key = run_id.encode()  # on the run's partition, read back when the run is rebuilt
    codec = SingleObjectCodec()
    producer = OonaProducer(kafka, codec)
    good = codec.encode(decisions, decisions.message_type(sender_id="tamiyo-old", topic=decisions.name, run_id=run_id,
                                                          payload=past_decision(run_id, 0)))
    bad = {
        "tombstone": None,
        "garbage": b"\x00not avro at all",
        "newer schema": b"\xc3\x01" + b"\x99" * 8 + good[10:],  # a fingerprint this Tamiyo does not know
    }
    for value in bad.values():
        producer.produce_raw(decisions.name, value, key)
    producer.produce_raw(decisions.name, good, key)  # a valid past decision after the bad ones: epoch 0 is decided
    producer.flush()
    publish_runs(kafka, {run_id: plateau_run(epochs=3)})

    service = Tamiyo(kafka, SingleObjectCodec(), instance="dl", scatter="native")
    try:
        mine = lambda: {(m.run_id, m.payload.epoch) for m in decisions_on_log(kafka) if m.run_id == run_id}  # noqa: E731
        step_until(service, lambda: service.settled and {(run_id, 1), (run_id, 2)} <= mine(), 120,
                   "the run decided past the bad records")
        assert service.past_decisions == 1
        service.rebuild()  # the bad records are met again: skipped, not dead-lettered again, no livelock
        step_until(service, lambda: service.settled and service.past_decisions == 3, 60, "the rebuild")
    finally:
        service.close()
    restarted = Tamiyo(kafka, SingleObjectCodec(), instance="dl", scatter="native")  # ...nor after a restart
    try:
        step_until(restarted, lambda: restarted.settled and restarted.past_decisions == 3, 60, "the restart")
        on_log = [m for m in decisions_on_log(kafka) if m.run_id == run_id]
    finally:
        restarted.close()
    from_decisions = [m for m in dead_letters(kafka) if header(m, "esper.dlq.topic") == decisions.name]
    reasons = [header(m, "esper.dlq.reason") for m in from_decisions]
    print("dead letters of the decisions topic:", reasons)
    assert len(from_decisions) == len(bad), reasons
    assert sorted(m.value() or b"" for m in from_decisions) == sorted(v or b"" for v in bad.values())
    assert any("no value" in r for r in reasons) and any("unknown writer schema" in r for r in reasons)
    assert all(r.startswith("tamiyo: ") for r in reasons)
    assert sorted(m.payload.epoch for m in on_log) == [0, 1, 2]  # epoch 0 stayed the past decision's
    assert next(m for m in on_log if m.payload.epoch == 0).sender_id == "tamiyo-old"


def test_finished_and_failed_runs_are_forgotten_late_events_skipped_and_a_resumed_run_decided(esper_settings):
    kafka = esper_settings.kafka
    done, failed = f"done-{uuid.uuid4().hex[:6]}", f"failed-{uuid.uuid4().hex[:6]}"
    completed = plateau_run(epochs=2)
    completed[0] = (SESSIONS, session(epochs=2))
    completed.append((SESSIONS, session(epochs=2, status=SessionStatus.COMPLETED)))
    broken = plateau_run(epochs=2) + [(SESSIONS, session(status=SessionStatus.FAILED))]
    publish_runs(kafka, {done: completed, failed: broken})

    service = Tamiyo(kafka, SingleObjectCodec(), instance="fg", scatter="native", orphan_timeout_s=1.0)
    try:
        step_until(service, lambda: service.runs.ended(done) == "completed" and service.runs.ended(failed) == "failed",
                   120, "both runs decided and forgotten")
        assert done not in service.runs.runs and failed not in service.runs.runs

        # A late event of the completed run: skipped, not held as an orphan (nor dead-lettered as an unknown run).
        publish(kafka, done, [(HEALTH, health(5, 11, 1))], "late")
        step_until(service, lambda: service.late >= 1, 60, "the late event")
        assert done not in service.orphans and done not in service.runs.runs

        # The failed run resumed: its history is read again and its next epoch decided.
        resumed = [(SESSIONS, session(status=SessionStatus.RUNNING))]
        resumed += [(HEALTH, health(2, layer, k)) for layer in (11, 22) for k in (0, 1)]
        resumed.append((EPOCHS, epoch_event(2, 0.4)))
        publish(kafka, failed, resumed, "resumed")
        step_until(service, lambda: (failed, 2) in {(m.run_id, m.payload.epoch) for m in decisions_on_log(kafka)},
                   120, "the resumed run's epoch 2 decided")
        stats = service.stats()
    finally:
        service.close()
    decided = [(m.run_id, m.payload.epoch) for m in decisions_on_log(kafka) if m.run_id in (done, failed)]
    reasons = [header(m, "esper.dlq.reason") for m in dead_letters(kafka)]
    print("stats:", stats, "dead letters:", reasons)
    assert sorted(set(decided)) == sorted(decided), "an epoch decided twice"
    assert {e for r, e in decided if r == done} == {0, 1} and {e for r, e in decided if r == failed} == {0, 1, 2}
    assert not [r for r in reasons if "unknown run" in r], reasons


def test_a_long_decision_history_is_read_a_chunk_per_step(esper_settings):
    kafka = esper_settings.kafka
    decisions = topic_spec(TopicName.CONTROL_TAMIYO_DECISIONS.value, kafka.topic_prefix)
    runs = [f"hist-{i:03d}-{uuid.uuid4().hex[:4]}" for i in range(200)]
    producer = OonaProducer(kafka, SingleObjectCodec())
    for run_id in runs:
        for epoch in range(10):
            producer.publish(decisions, decisions.message_type(sender_id="tamiyo-old", topic=decisions.name,
                                                               run_id=run_id, payload=past_decision(run_id, epoch)))
    producer.flush()
    total = len(runs) * 10

    service = Tamiyo(kafka, SingleObjectCodec(), instance="hist", scatter="native")
    service.load_chunk = 100
    try:
        step_until(service, lambda: not service.settled, 60, "the rebuild to start")
        step_until(service, lambda: service.settled, 120, "the history read")
        steps = list(service.load_steps)
        states = {run_id: service.runs.runs[run_id].decided for run_id in runs if run_id in service.runs.runs}
    finally:
        service.close()
    sizes = [n for n, _ in steps]
    print(f"past decisions={total} steps={len(steps)} largest step={max(sizes)} records, "
          f"{max(s for _, s in steps):.2f}s; whole history {sum(s for _, s in steps):.2f}s")
    assert sum(sizes) == total and max(sizes) <= 100 and len(steps) >= total // 100
    assert len(states) == len(runs) and all(decided == set(range(10)) for decided in states.values())


def test_reading_past_decisions_failing_mid_rebuild_starts_over_from_the_start_of_the_log(esper_settings):
    """A rebuild whose read of past decisions fails (a broker hiccup: list_offsets timed out) starts over as a
    fresh start does: the input events consumed and held meanwhile (here the run's session) are read again, so
    the run is decided. Before, the held events were dropped with the consumer left past them: with its session
    lost, the run was never decided (lag 0)."""
    kafka = esper_settings.kafka
    run_id = f"over-{uuid.uuid4().hex[:6]}"
    publish_runs(kafka, {run_id: plateau_run(epochs=3)})
    service = Tamiyo(kafka, SingleObjectCodec(), instance="over", scatter="native")
    sessions = topic_spec(SESSIONS, kafka.topic_prefix).name
    held_when_failed: list[int] = []
    end_offsets_of = service._offsets.end_offsets

    def failing_until_the_session_is_held(*args, **kwargs):
        # Reading the ends of our decisions topic fails until a failure drops the run's session, held.
        if not held_when_failed:
            if any(d.topic == sessions for d in service._held):
                held_when_failed.append(len(service._held))
            raise KafkaClientError(None, "list_offsets timed out")
        return end_offsets_of(*args, **kwargs)

    service._offsets.end_offsets = failing_until_the_session_is_held  # type: ignore[method-assign]
    # Each failure rewinds the consumer, and the fetch it restarts can take longer than the service's 0.2 s poll
    # on a loaded machine (every poll empty, every read failing again): poll until the events come.
    process_batch = service.processor.process_batch
    service.processor.process_batch = lambda *args, **kwargs: process_batch(500, 5.0, 0.5)  # type: ignore[method-assign]
    try:
        step_until(service, lambda: bool(held_when_failed), 60, "a failed read of past decisions with the session held")
        step_until(service, lambda: {m.payload.epoch for m in decisions_on_log(kafka) if m.run_id == run_id}
                   == {0, 1, 2}, 90, "the run's three epochs decided after the failed rebuild")
    finally:
        service.close()
    assert held_when_failed[0] >= 1
