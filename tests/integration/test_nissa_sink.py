"""Nissa's sink on a real broker: every topic into DuckDB, typed; exactly once across kill -9; the CLI."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import duckdb
import pytest

from contracts.dead_letter import DLQ_HEADER_OFFSET, DLQ_HEADER_REASON, DLQ_HEADER_TOPIC
from services.core.paths import REPO_ROOT
from services.nissa.queries import run_query
from services.nissa.sink import NissaSink
from services.oona import clients
from services.oona.admin import end_offsets
from services.oona.topic_registry import all_topics, topic_spec
from tests.esper_cli import ESPER, esper_env
from tests.samples import T0, health_signal, message_for


def telemetry(spec, n: int, start: int = 0) -> list:
    return [spec.message_type(sender_id="tolaria", topic=spec.name, run_id=f"run-{i % 5}", timestamp=T0,
                              payload=health_signal(epoch=i // 20, seed_idx=i % 20)) for i in range(start, start + n)]


def ingest(settings, db: Path, timeout_s: float = 60.0) -> int:
    sink = NissaSink(settings.kafka, db)
    sink.start()
    try:
        return sink.run_until_caught_up(timeout_s)
    finally:
        sink.close()


def test_events_of_every_type_land_typed_in_duckdb(esper_settings, producer_factory, tmp_path):
    prefix = esper_settings.kafka.topic_prefix
    producer = producer_factory()
    sent = {}
    for spec in all_topics(prefix):
        if not spec.raw:
            message = message_for(spec)
            producer.publish(spec, message)
            sent[spec.record_name] = message
    health = topic_spec("telemetry.seed.health", prefix)
    producer.produce_raw(health.name, b"not avro at all", b"run-x")
    producer.produce_raw(prefix + "esper.dlq", b"\xc3\x01broken", b"run-y", [
        (DLQ_HEADER_TOPIC, health.name.encode()), (DLQ_HEADER_OFFSET, b"7"), (DLQ_HEADER_REASON, b"bad body")])
    producer.flush()

    db = tmp_path / "nissa.duckdb"
    sink = NissaSink(esper_settings.kafka, db)
    sink.start()
    try:
        assert sink.run_until_caught_up(60.0) == len(sent) + 2
    finally:
        sink.close()
    assert sink.committed_rows == len(sent) + 2, "what the sink reports at its stop (`esper serve nissa`)"
    con = duckdb.connect(str(db), read_only=True)
    for spec in all_topics(prefix):
        if spec.raw:
            continue
        table = spec.payload.__name__
        name = "".join("_" + c.lower() if c.isupper() else c for c in table).lstrip("_")
        rows = con.execute(f'SELECT event_id, run_id, topic, sender_id FROM "{name}"').fetchall()
        message = sent[spec.record_name]
        assert rows == [(message.event_id, message.run_id, spec.name, "tests")], name
    row = con.execute("SELECT timestamp, payload_timestamp, layer_id, health_score, is_ready_for_transition, "
                      "typeof(timestamp), typeof(layer_id), typeof(health_score) FROM health_signal").fetchone()
    assert row[0] == sent["HealthSignalMessage"].timestamp and row[1] == T0
    assert row[2:5] == (7, 1.0, False) and row[5:] == ("TIMESTAMP WITH TIME ZONE", "BIGINT", "DOUBLE")
    gates = con.execute("SELECT gates[1].name, gates[1].passed, to_state FROM seed_transition").fetchone()
    assert gates == ("counterfactual", True, "fossilized")
    assert con.execute("SELECT features['health'] FROM adaptation_decision").fetchone() == (0.4,)
    assert con.execute("SELECT state_epoch, parameter_count FROM epoch_completed").fetchone() == (3, 4242)
    assert con.execute("SELECT kernel_input_shape, failure_reason FROM kernel_ready").fetchone() == ([32], None)
    assert con.execute("SELECT artifact FROM compiled_kernel").fetchone() == (b"\x00\x01weights",)
    dead = con.execute("SELECT origin, source_topic, source_offset, reason, original_value FROM dead_letters "
                       "ORDER BY origin").fetchall()
    assert dead[0][:3] == ("dlq", health.name, 7) and dead[0][3] == "bad body"
    assert dead[1][:2] == ("nissa", health.name) and "not Avro single-object" in dead[1][3]
    assert dead[1][4] == b"not avro at all"
    assert con.execute("SELECT run_id, status, epochs, seeds_fossilized FROM runs").fetchall() == [
        ("run-sample", "initialized", 1, 1)]


def start_sink_process(settings, db: Path) -> subprocess.Popen:
    env = esper_env(KAFKA_BOOTSTRAP_SERVERS=settings.kafka.bootstrap_servers,
                    ESPER_KAFKA__TOPIC_PREFIX=settings.kafka.topic_prefix, ESPER_STATE_DIR=str(settings.state_dir))
    return subprocess.Popen(
        [*ESPER, "serve", "nissa", "--db", str(db), "--batch-rows", "300", "--progress"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_after_first_commit(process: subprocess.Popen, timeout_s: float = 60.0) -> int:
    """Wait for the sink's first `committed N` line, then SIGKILL it; returns N."""
    deadline = time.monotonic() + timeout_s
    for line in process.stdout:  # blocks on the child's output: the condition, no sleeping
        if line.startswith("committed "):
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            return int(line.split()[1])
        assert time.monotonic() < deadline, "the sink never committed"
    raise AssertionError(f"the sink exited early: {process.wait()} {process.stderr.read()[-2000:]}")


def test_kill_9_mid_ingest_then_restart_gives_no_duplicate_and_no_gap(esper_settings, producer_factory, tmp_path):
    prefix = esper_settings.kafka.topic_prefix
    spec = topic_spec("telemetry.seed.health", prefix)
    epochs = topic_spec("system.events.epoch", prefix)
    producer = producer_factory()
    producer.publish_many(spec, telemetry(spec, 4000))
    for _ in range(30):
        producer.publish(epochs, message_for(epochs))
    producer.flush()
    db = tmp_path / "nissa.duckdb"

    committed_before_kill = []
    for round_ in range(2):
        with start_sink_process(esper_settings, db) as process:
            committed_before_kill.append(kill_after_first_commit(process))
        producer.publish_many(spec, telemetry(spec, 1000, start=4000 + 1000 * round_))  # more while it is down
        producer.flush()
    assert all(0 < n < 4030 for n in committed_before_kill), committed_before_kill  # killed mid-ingest

    ingest(esper_settings, db)
    con = duckdb.connect(str(db), read_only=True)
    total, ids, places = con.execute(
        "SELECT count(*), count(DISTINCT event_id), count(DISTINCT (kafka_partition, kafka_offset)) FROM health_signal"
    ).fetchone()
    assert total == ids == places == 6000
    assert con.execute("SELECT count(*), count(DISTINCT event_id) FROM epoch_completed").fetchone() == (30, 30)
    assert con.execute("SELECT count(*) FROM dead_letters").fetchone() == (0,)
    stored = dict(((t, p), o) for t, p, o in con.execute("SELECT topic, partition, next_offset FROM nissa_offsets"
                                                         ).fetchall())
    ends = end_offsets(clients.admin(esper_settings.kafka), [(spec.name, p) for p in range(spec.partitions)])
    assert {k: v for k, v in stored.items() if k[0] == spec.name} == {k: v for k, v in ends.items() if v > 0}


def test_readers_get_in_while_the_sink_runs_and_cli_errors_are_one_line(esper_settings, producer_factory, tmp_path):
    prefix = esper_settings.kafka.topic_prefix
    spec = topic_spec("telemetry.seed.health", prefix)
    producer = producer_factory()
    producer.publish_many(spec, telemetry(spec, 200))
    producer.flush()
    db = tmp_path / "nissa.duckdb"
    sink = NissaSink(esper_settings.kafka, db, hold_s=0.0)
    sink.start()
    try:
        sink.run_until_caught_up(60)
        sink.step(timeout_s=0.05)  # nothing new: the sink lets go of the file
        assert run_query(db, "SELECT count(*) FROM health_signal").rows == [(200,)]
        producer.publish_many(spec, telemetry(spec, 50, start=200))
        producer.flush()
        sink.run_until_caught_up(60)
    finally:
        sink.close()
    assert run_query(db, "SELECT count(DISTINCT event_id) FROM health_signal").rows == [(250,)]

    def esper_sql(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*ESPER, "sql", *args], cwd=REPO_ROOT, text=True,
                              capture_output=True, env=esper_env(), timeout=60)

    ok = esper_sql("SELECT count(*) AS n FROM health_signal", "--db", str(db), "--format", "json")
    assert ok.returncode == 0 and '"n": 250' in ok.stdout
    for args in (["SELEC 1", "--db", str(db)], ["DELETE FROM health_signal", "--db", str(db)],
                 ["SELECT 1", "--db", str(tmp_path / "missing.duckdb")]):
        failed = esper_sql(*args)
        assert failed.returncode == 1 and failed.stderr.startswith("esper: error: ")
        assert failed.stderr.count("\n") == 1, failed.stderr


def wait_for_commit(process: subprocess.Popen, timeout_s: float = 60.0) -> int:
    """Block on the sink's output until its first `committed N` line; returns N."""
    deadline = time.monotonic() + timeout_s
    for line in process.stdout:
        if line.startswith("committed "):
            return int(line.split()[1])
        assert time.monotonic() < deadline, "the sink never committed"
    raise AssertionError(f"the sink exited early: {process.wait()} {process.stderr.read()[-2000:]}")


def test_a_second_sink_on_the_same_database_exits_with_one_line_and_nothing_is_stored_twice(
        esper_settings, producer_factory, tmp_path):
    """Issue 11: `esper serve nissa` beside a running sink (or an orphan of a killed supervisor) stored every row
    twice."""
    from services.nissa.writer_lock import WriterLockedError

    prefix = esper_settings.kafka.topic_prefix
    spec = topic_spec("telemetry.seed.health", prefix)
    producer = producer_factory()
    producer.publish_many(spec, telemetry(spec, 3000))
    producer.flush()
    db = tmp_path / "nissa.duckdb"
    with start_sink_process(esper_settings, db) as first:
        try:
            assert wait_for_commit(first) > 0
            with start_sink_process(esper_settings, db) as second:
                try:
                    out, err = second.communicate(timeout=120)
                except subprocess.TimeoutExpired:
                    second.kill()
                    second.communicate()
                    pytest.fail("a second sink kept running beside the first one")
            assert second.returncode == 1, (out, err)
            assert err.count("\n") == 1 and err.startswith("esper: error: another Nissa sink (pid "), err
            with pytest.raises(WriterLockedError):  # in-process too, before it reads anything
                NissaSink(esper_settings.kafka, db).start()
            reader = subprocess.run([*ESPER, "sql", "SELECT count(*) AS n FROM health_signal", "--db", str(db),
                                     "--format", "json"], cwd=REPO_ROOT, text=True, capture_output=True,
                                    env=esper_env(), timeout=60)
            assert reader.returncode == 0 and '"n": ' in reader.stdout, reader.stderr  # readers still get in
            producer.publish_many(spec, telemetry(spec, 500, start=3000))
            producer.flush()
        finally:
            first.send_signal(signal.SIGTERM)
            first.communicate(timeout=60)
    assert first.returncode == 0
    ingest(esper_settings, db)  # the first one stopped: the next writer takes over where it left
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT count(*), count(DISTINCT event_id), count(DISTINCT (kafka_partition, kafka_offset)) "
                       "FROM health_signal").fetchone() == (3500, 3500, 3500)
    assert con.execute("SELECT count(*) FROM dead_letters").fetchone() == (0,)
