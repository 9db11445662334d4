"""The archive without a broker: the manifest, rows (raw + typed), files per run, reading back, SQL views, replay."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from contracts.dead_letter import DLQ_HEADER_OFFSET, DLQ_HEADER_REASON, DLQ_HEADER_TOPIC
from services.nissa.archive import (
    ArchivedMessage,
    ArchiveReader,
    Manifest,
    archive_connection,
    archive_table,
    load_manifest,
    save_manifest,
    write_archive_files,
)
from services.nissa.batch import Batch, Decoders
from services.nissa.errors import ArchiveError
from services.nissa.replay import ReplayWriter
from services.nissa.sink import sink_tables
from services.oona.codec import SingleObjectCodec
from services.oona.topic_registry import all_topics, topic_spec
from tests.samples import health_signal, message_for

CODEC = SingleObjectCodec()
TABLES = sink_tables(CODEC.store)
BY_RECORD = {t.record_name: t for t in TABLES}
HEALTH = topic_spec("telemetry.seed.health")
DLQ = topic_spec("esper.dlq")


def new_batch() -> Batch:
    routes = {s.name: (s, BY_RECORD["DeadLetter"] if s.raw else BY_RECORD[s.record_name]) for s in all_topics()}
    return Batch(routes, Decoders(CODEC.store))


def health_messages(run_ids: list[str], partition: int = 0, start: int = 0) -> list[ArchivedMessage]:
    out = []
    for i, run in enumerate(run_ids):
        message = HEALTH.message_type(sender_id="t", topic=HEALTH.name, run_id=run,
                                      payload=health_signal(epoch=i, seed_idx=i % 2))
        out.append(ArchivedMessage(HEALTH.name, partition, start + i, 1_700_000_000_000 + i, run.encode(),
                                   CODEC.encode(HEALTH, message), None))
    return out


def archived(root, messages, spec=HEALTH) -> list:
    table = BY_RECORD["DeadLetter"] if spec.raw else BY_RECORD[spec.record_name]
    typed = new_batch().decode({spec.name: messages}).get(table.name, [])
    return write_archive_files(root, spec.name, spec.run_scoped, archive_table(table, typed, messages))


def test_manifest_plans_from_the_stored_offsets_and_counts_what_retention_lost(tmp_path):
    manifest = Manifest(prefix="p.")
    key = ("telemetry.seed.health", 0)
    assert manifest.plan({key: (0, 10)}) == {key: (0, 10)}
    manifest.archived(key, 0, 10)
    assert manifest.plan({key: (0, 15)}) == {key: (10, 15)}
    assert manifest.plan({key: (12, 15)}) == {key: (12, 15)}  # retention deleted 10, 11
    manifest.archived(key, 12, 15)
    assert manifest.lost == {key: 2} and manifest.next_offsets == {key: 15}
    assert manifest.plan({key: (12, 15)}) == {key: (15, 15)}  # nothing new
    save_manifest(tmp_path, manifest)
    assert load_manifest(tmp_path) == manifest
    assert load_manifest(tmp_path / "nothing-yet") == Manifest()
    (tmp_path / "manifest.json").write_text("{broken")
    with pytest.raises(ArchiveError, match="unreadable"):
        load_manifest(tmp_path)


def test_rows_keep_the_exact_bytes_and_typed_columns_null_where_a_value_did_not_decode(tmp_path):
    messages = health_messages(["run-a", "run-b", "run-a"])
    messages.insert(1, ArchivedMessage(HEALTH.name, 0, 99, 1_700_000_000_500, b"run-a", b"not avro", None))
    table = BY_RECORD[HEALTH.record_name]
    typed = new_batch().decode({HEALTH.name: messages})[table.name]
    rows = archive_table(table, typed, messages)
    assert rows.column("kafka_value").to_pylist() == [m.value() for m in messages]
    assert rows.column("kafka_offset").to_pylist() == [0, 99, 1, 2]
    assert rows.column("decoded").to_pylist() == [True, False, True, True]
    assert rows.column("run_id").to_pylist() == ["run-a", None, "run-b", "run-a"]
    assert rows.column("epoch").to_pylist() == [0, None, 1, 2]

    files = write_archive_files(tmp_path, HEALTH.name, True, rows)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in files) == [
        "topic=telemetry.seed.health/run_id=run-a/part-0-0.parquet",
        "topic=telemetry.seed.health/run_id=run-b/part-0-1.parquet"]
    assert pq.read_table(files[0]).column("kafka_offset").to_pylist() == [0, 99, 2]


def test_reading_back_a_run_sql_views_and_replay_need_no_broker(tmp_path):
    root = tmp_path / "archive"
    archived(root, health_messages(["run-a", "run-b", "run-a", "run-a"]))
    archived(root, health_messages(["run-a"], partition=1, start=7))
    dlq = ArchivedMessage(DLQ.name, 0, 0, 1_700_000_000_000, b"run-a", b"\xc3\x01broken",
                          [(DLQ_HEADER_TOPIC, HEALTH.name.encode()), (DLQ_HEADER_OFFSET, b"7"),
                           (DLQ_HEADER_REASON, b"bad body")])
    assert archived(root, [dlq], DLQ)[0].parent.name == "run_id=_shared"
    session = topic_spec("training.sessions")
    session_value = CODEC.encode(session, message_for(session, run_id="run-a"))
    archived(root, [ArchivedMessage(session.name, 2, 0, 1_700_000_000_000, b"run-a", session_value, None)], session)

    selection = ArchiveReader(root).select("run-a")
    assert selection.run_rows == 5 and selection.rows == 6  # + the shared DLQ row
    assert selection.ends[(HEALTH.name, 0)] == 4 and selection.ends[(HEALTH.name, 1)] == 8
    later = ArchiveReader(root).select("run-a", from_offset=2)
    assert later.tables[HEALTH.name].column("kafka_offset").to_pylist() == [2, 3, 7]

    con = archive_connection(root)
    assert con.execute("SELECT run_id, count(*) FROM health_signal GROUP BY ALL ORDER BY 1").fetchall() == [
        ("run-a", 4), ("run-b", 1)]
    assert con.execute("SELECT source_topic, source_offset, reason, origin FROM dead_letters").fetchall() == [
        (HEALTH.name, 7, "bad body", "dlq")]
    assert con.execute("SELECT count(*) FROM epoch_completed").fetchone() == (0,)  # no files: an empty table
    # The sink's analytic views work over the archive's tables (run-b has no session and no epoch).
    assert con.execute("SELECT run_id, status FROM runs").fetchall() == [("run-a", "initialized")]
    con.close()

    writer = ReplayWriter(tmp_path / "replay.duckdb", "run-a")
    for chunk in selection.chunks(lambda n: None):
        writer.add(chunk)
    counts = writer.finish(selection.ends)
    assert writer.run_events == 5
    assert (counts["health_signal"], counts["training_session_event"], counts["dead_letters"]) == (4, 1, 1)


def test_a_missing_or_empty_archive_is_refused(tmp_path):
    with pytest.raises(ArchiveError, match="no archive at"):
        ArchiveReader(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArchiveError, match="holds no Parquet files"):
        archive_connection(tmp_path / "empty")
