"""Tamiyo under faults: kill -9 mid-stream, bad input, a corrupt policy file."""

from __future__ import annotations

import re
import signal
import subprocess
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING

from contracts import EpochCompleted, TopicName
from services.oona import clients
from services.oona.admin import end_offsets, partitions_of
from services.oona.codec import SingleObjectCodec
from services.oona.log_reader import read_range
from services.oona.producer import OonaProducer
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import topic_spec
from services.tamiyo.decider import Decider
from services.tamiyo.policy_store import load_policy
from services.tamiyo.recorded import load_recorded_runs, replay_decisions
from services.tamiyo.service import CatalogChooser
from services.urza.catalog_as_of import load_catalog_history
from tests.esper_cli import ESPER, REPO, esper_env, run_esper
from tests.integration.conftest import read_raw
from tests.integration.test_tamiyo import comparable, publish_slot_kernels, tamiyo_running
from tests.tamiyo_events import health, plateau_run


def publish_runs(kafka: KafkaSettings, runs: dict[str, list]) -> int:
    producer = OonaProducer(kafka, SingleObjectCodec())
    count = 0
    for run_id, events in runs.items():
        for i, (topic, payload) in enumerate(events):
            spec = topic_spec(topic, kafka.topic_prefix)
            producer.publish(spec, spec.message_type(event_id=f"{run_id}-{i}", sender_id="tests", topic=spec.name,
                                                     run_id=run_id, payload=payload))
            count += 1
    producer.flush()
    return count


class DecisionWatcher:
    """One read_committed reader of the decisions topic, accumulating what Tamiyo committed."""

    def __init__(self, kafka: KafkaSettings) -> None:
        from confluent_kafka import TopicPartition


        self.spec = topic_spec(TopicName.CONTROL_TAMIYO_DECISIONS.value, kafka.topic_prefix)
        self.codec = SingleObjectCodec()
        self.consumer = clients.consumer(kafka, {"group.id": f"watch-{uuid.uuid4().hex[:8]}",
                                                 "isolation.level": "read_committed", "enable.auto.commit": False})
        partitions = self.consumer.list_topics(self.spec.name, timeout=10).topics[self.spec.name].partitions
        self.consumer.assign([TopicPartition(self.spec.name, p, OFFSET_BEGINNING) for p in partitions])
        self.seen: list = []

    def poll(self) -> list:
        for msg in self.consumer.consume(500, 0.2):
            if msg.error() is None:
                self.seen.append(self.codec.decode(self.spec, msg.value()))
        return self.seen

    def epochs(self) -> set:
        return {(m.run_id, m.payload.epoch) for m in self.seen}

    def wait(self, condition, timeout_s: float, what: str) -> list:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.poll()
            if condition(self):
                return self.seen
        raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")

    def close(self) -> None:
        self.consumer.close()


def decisions_on_log(kafka: KafkaSettings) -> list:
    spec = topic_spec(TopicName.CONTROL_TAMIYO_DECISIONS.value, kafka.topic_prefix)
    admin = clients.admin(kafka)
    ends = end_offsets(admin, partitions_of(admin, [spec.name]))  # committed transactions only
    codec = SingleObjectCodec()
    return [codec.decode(spec, m.value()) for m in
            read_range(kafka, {key: (OFFSET_BEGINNING, end) for key, end in ends.items()})]


def serve(env: dict, log_path, instance: str = "k1") -> subprocess.Popen:
    with open(log_path, "ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen([*ESPER, "-v", "serve", "tamiyo", "--instance", instance, "--scatter", "native"],
                                env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)


def test_kill_9_mid_stream_loses_and_duplicates_no_decision(esper_settings, tmp_path):
    kafka = esper_settings.kafka
    publish_slot_kernels(kafka, [2], [8])
    publish_slot_kernels(kafka, [8], [8])
    runs = {f"kill-{i:02d}-{uuid.uuid4().hex[:4]}": plateau_run(epochs=25, budget=3) for i in range(40)}
    produced = publish_runs(kafka, runs)
    total = len(runs) * 25
    env = esper_env(
        ESPER_KAFKA__BOOTSTRAP_SERVERS=kafka.bootstrap_servers,
        ESPER_KAFKA__TOPIC_PREFIX=kafka.topic_prefix,
        ESPER_STATE_DIR=str(tmp_path / "state"),
    )
    watcher = DecisionWatcher(kafka)
    first = serve(env, tmp_path / "tamiyo.log")
    try:
        watcher.wait(lambda w: len(w.epochs()) >= total // 5, 120, "the first fifth of the decisions")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        killed_at = len({(m.run_id, m.payload.epoch) for m in decisions_on_log(kafka)})
        restarted = time.monotonic()
        second = serve(env, tmp_path / "tamiyo.log")
        try:
            watcher.wait(lambda w: len(w.epochs()) >= total, 180, "every epoch decided")
            recovery_s = time.monotonic() - restarted
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=30) == 0
        finally:
            if second.poll() is None:
                second.kill()
    finally:
        if first.poll() is None:
            first.kill()
        watcher.close()
    final = decisions_on_log(kafka)
    ids = [m.payload.decision_id for m in final]
    epochs = {(m.run_id, m.payload.epoch) for m in final}
    print(f"events produced={produced} epochs={total} decided before kill -9={killed_at} "
          f"decision records={len(final)} duplicates={len(ids) - len(set(ids))} missing={total - len(epochs)} "
          f"recovery={recovery_s:.1f}s")
    assert killed_at < total, "the kill came after everything was decided: not a mid-stream kill"
    assert len(ids) == len(set(ids)) and len(epochs) == total
    # ...and what was decided across the kill is what an undisturbed replay decides.
    policy, record = load_policy()
    history = load_catalog_history(kafka, SingleObjectCodec())
    decider = Decider(policy, record.version, CatalogChooser(history.whole()))
    recorded = load_recorded_runs(kafka, SingleObjectCodec(), list(runs)[:5])
    for run_id, run in recorded.items():
        assert comparable(replay_decisions(run, decider, (history, CatalogChooser))) == comparable(run.decisions), \
            run_id


def test_two_instances_share_the_runs_and_one_takes_over_when_the_other_is_killed(esper_settings, tmp_path):
    kafka = esper_settings.kafka
    publish_slot_kernels(kafka, [2], [8])
    publish_slot_kernels(kafka, [8], [8])
    runs = {f"pair-{i:02d}-{uuid.uuid4().hex[:4]}": plateau_run(epochs=25, budget=3) for i in range(30)}
    total = len(runs) * 25
    env = esper_env(
        ESPER_KAFKA__BOOTSTRAP_SERVERS=kafka.bootstrap_servers,
        ESPER_KAFKA__TOPIC_PREFIX=kafka.topic_prefix,
        ESPER_STATE_DIR=str(tmp_path / "state"),
    )
    watcher = DecisionWatcher(kafka)
    processes = {name: serve(env, tmp_path / f"{name}.log", name) for name in ("a", "b")}
    try:
        # Both in the group, the partitions split between them (range: 2 + 1), before any run starts.
        watcher.wait(
            lambda w: all(
                re.search(r"rebuilding partitions=\[\d(, \d)?\]\n", (tmp_path / f"{n}.log").read_text())
                for n in ("a", "b")
            ),
            120,
            "the group to split the partitions",
        )
        publish_runs(kafka, runs)
        watcher.wait(lambda w: {m.sender_id for m in w.seen} == {"tamiyo-a", "tamiyo-b"}, 120,
                     "both instances deciding (the runs spread over the partitions)")
        processes["a"].send_signal(signal.SIGKILL)
        processes["a"].wait(timeout=10)
        killed = time.monotonic()
        watcher.wait(lambda w: len(w.epochs()) >= total, 180, "every epoch decided by the survivor")
        takeover_s = time.monotonic() - killed
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)
        watcher.close()
    final = decisions_on_log(kafka)
    ids = [m.payload.decision_id for m in final]
    by_sender = {s: sum(1 for m in final if m.sender_id == s) for s in ("tamiyo-a", "tamiyo-b")}
    print(f"epochs={total} decision records={len(final)} by instance={by_sender} duplicates={len(ids) - len(set(ids))} "
          f"takeover={takeover_s:.1f}s")
    assert len(ids) == len(set(ids)) and len({(m.run_id, m.payload.epoch) for m in final}) == total


def test_bad_input_goes_to_the_dead_letter_queue_and_the_run_is_still_decided(esper_settings):
    kafka = esper_settings.kafka
    prefix = kafka.topic_prefix
    run_id = f"bad-{uuid.uuid4().hex[:6]}"
    events = plateau_run(epochs=3)
    telemetry = topic_spec(TopicName.TELEMETRY_SEED_HEALTH.value, prefix)
    epochs_topic = topic_spec(TopicName.SYSTEM_EVENTS_EPOCH.value, prefix)
    producer = OonaProducer(kafka, SingleObjectCodec())
    # A signal of a slot the session will not have, logged before the session: checked when the session arrives.
    early_id = f"early-{uuid.uuid4().hex[:6]}"
    producer.publish(telemetry, telemetry.message_type(sender_id="tests", topic=telemetry.name, run_id=early_id,
                                                       payload=health(0, 999, 1)))
    producer.flush()
    publish_runs(kafka, {run_id: events, early_id: plateau_run(epochs=1)})
    bad: list[tuple] = [
        (telemetry, early_id, None, "no seed slot 999:1"),  # published above, before its run's session
        (telemetry, "ghost-run", health(0, 11, 0), "unknown run ghost-run"),        # no session ever
        (telemetry, run_id, health(1, 999, 0), "no seed slot 999:0"),              # unknown layer
        (telemetry, run_id, health(1, 11, 0), "second health signal"),              # conflicting duplicate
    ]
    for spec, rid, payload, _ in bad:
        if payload is None:
            continue
        producer.publish(spec, spec.message_type(sender_id="tests", topic=spec.name, run_id=rid, payload=payload))
    # An exact duplicate (same event id) is skipped silently; bytes that are not an event are dead-lettered.
    epoch0 = next(p for t, p in events if isinstance(p, EpochCompleted))
    producer.publish(
        epochs_topic,
        epochs_topic.message_type(
            event_id=f"{run_id}-{events.index(('system.events.epoch', epoch0))}",
            sender_id="tests",
            topic=epochs_topic.name,
            run_id=run_id,
            payload=epoch0,
        ),
    )
    producer.produce_raw(telemetry.name, b"\x00not avro", key=run_id.encode())
    # An id seen before with other content is a conflict: dead-lettered as one, the first event stands.
    first = next(i for i, (t, p) in enumerate(events) if t == telemetry.name[len(prefix):])
    producer.publish(
        telemetry,
        telemetry.message_type(
            event_id=f"{run_id}-{first}",
            sender_id="tests",
            topic=telemetry.name,
            run_id=run_id,
            payload=events[first][1].model_copy(update={"health_score": 0.1}),
        ),
    )
    bad.append((telemetry, run_id, None, f"event id conflict: {run_id}-{first}"))
    producer.flush()
    with tamiyo_running(kafka, instance="bad", orphan_timeout_s=1.0) as tamiyo:
        dlq = read_raw(kafka, topic_spec(TopicName.DLQ.value, prefix).name, 6, timeout_s=60)
        watcher = DecisionWatcher(kafka)
        try:
            watcher.wait(lambda w: {(run_id, 2), (early_id, 0)} <= w.epochs(), 60, "epoch 2 and the early run decided")
        finally:
            watcher.close()
        decisions = decisions_on_log(kafka)
        stats = tamiyo.stats()
    reasons = [dict(m.headers() or {}).get("esper.dlq.reason", b"").decode() for m in dlq]
    print("dead letters:", reasons, "stats:", stats)
    for _, _, _, reason in bad:
        assert any(reason in r for r in reasons), (reason, reasons)
    assert len(dlq) == 6 and stats["duplicates_skipped"] >= 1
    mine = [m.payload for m in decisions if m.run_id == run_id]
    assert sorted({d.epoch for d in mine}) == [0, 1, 2] and len({d.decision_id for d in mine}) == len(mine)
    assert not [m for m in decisions if m.run_id == "ghost-run"]


def test_a_corrupt_policy_file_is_a_one_line_error(esper_settings, tmp_path):
    bad = tmp_path / "policy.json"
    bad.write_text("{not json")
    env = esper_env(ESPER_KAFKA__BOOTSTRAP_SERVERS=esper_settings.kafka.bootstrap_servers,
                    ESPER_KAFKA__TOPIC_PREFIX=esper_settings.kafka.topic_prefix, ESPER_STATE_DIR=str(tmp_path))
    result = run_esper("serve", "tamiyo", "--policy", str(bad), env=env, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "corrupt metadata" in result.stderr, result.stderr
