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
    archived_messages,
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
    read = [(topic, typed, raw) for topic, typed, raw in later.items(lambda n: None) if topic == HEALTH.name]
    assert [typed is None for _, typed, _ in read] == [False]  # every health row was archived decoded
    assert read[0][1].column("kafka_offset").to_pylist() == [2, 3, 7]  # (partition, offset) order
    assert read[0][2].column("kafka_offset").to_pylist() == [2, 3, 7]

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
    for topic, typed, raw in selection.items(lambda n: None):
        if typed is None:
            writer.add(archived_messages(topic, raw))
        else:
            writer.add_decoded(topic, typed, raw)
    counts = writer.finish(selection.ends)
    assert writer.run_events == 5
    assert (counts["health_signal"], counts["training_session_event"], counts["dead_letters"]) == (4, 1, 1)


def test_a_missing_or_empty_archive_is_refused(tmp_path):
    with pytest.raises(ArchiveError, match="no archive at"):
        ArchiveReader(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArchiveError, match="holds no Parquet files"):
        archive_connection(tmp_path / "empty")


@pytest.mark.parametrize("verdicts", [True, False], ids=["copied-by-duckdb", "archived-without-verdicts"])
def test_archive_replay_stores_archived_columns_through_the_same_admission(tmp_path, verdicts):
    """Rows the archive holds decoded are stored as archived: one whose bytes this code cannot decode (a newer
    writer schema, decoded when archived) is kept, one the contract rejects is dead-lettered with its exact
    bytes, an event id seen before with other content is a conflict, an exact duplicate is stored once; a row
    the archive could not decode is dead-lettered from its bytes. The same whether the archive carries the
    contract's verdicts (DuckDB copies the rows) or was written before it did (the sink's admission on Arrow)."""
    import duckdb
    import pyarrow as pa

    from services.nissa.admission import Contracts
    from services.nissa.replay import replay_from_archive

    messages = health_messages(["run-a"] * 4)
    messages.append(ArchivedMessage(HEALTH.name, 0, 4, 1_700_000_000_004, b"run-a", b"not avro", None))
    messages.append(ArchivedMessage(HEALTH.name, 0, 5, 1_700_000_000_005, b"run-a", messages[2].value(), None))
    table = BY_RECORD[HEALTH.record_name]
    typed = pa.concat_tables(new_batch().decode({HEALTH.name: messages})[table.name])
    epochs = typed.column("epoch").to_pylist()
    epochs[1] = -1  # the contract says epoch >= 0
    ids = typed.column("event_id").to_pylist()
    ids[3] = ids[2]  # another event (epoch 3, seed 1) under the id of the one before
    typed = typed.set_column(typed.schema.get_field_index("epoch"), "epoch", pa.array(epochs, pa.int64()))
    typed = typed.set_column(typed.schema.get_field_index("event_id"), "event_id", pa.array(ids, pa.string()))
    rows = archive_table(table, [typed], messages, Contracts(new_batch().routes) if verdicts else None)
    assert ("contract_violation" in rows.column_names) is verdicts
    values = rows.column("kafka_value").to_pylist()
    newer = b"\xc3\x01" + b"\xff" * 8 + values[0][10:]  # a fingerprint this code has never seen
    values[0] = newer
    rows = rows.set_column(rows.schema.get_field_index("kafka_value"), "kafka_value", pa.array(values, pa.binary()))
    write_archive_files(tmp_path / "archive", HEALTH.name, True, rows)
    assert ArchiveReader(tmp_path / "archive").select("run-a").sources[0].verdicts is verdicts
    con = archive_connection(tmp_path / "archive")  # esper sql --archive: what the contract passed, when known
    shown = [o for (o,) in con.execute("SELECT kafka_offset FROM health_signal ORDER BY 1").fetchall()]
    con.close()
    assert shown == ([0, 2, 3, 5] if verdicts else [0, 1, 2, 3, 5])

    result = replay_from_archive(tmp_path / "archive", "run-a", tmp_path / "replay.duckdb")
    assert result.run_events == 6
    with duckdb.connect(str(tmp_path / "replay.duckdb"), read_only=True) as con:
        assert con.execute("SELECT kafka_offset FROM health_signal ORDER BY 1").fetchall() == [(0,), (2,)]
        dead = con.execute("SELECT source_offset, error_type, original_value FROM dead_letters ORDER BY 1").fetchall()
        offsets = con.execute("SELECT topic, partition, next_offset FROM nissa_offsets").fetchall()
    assert [(o, t) for o, t, _ in dead] == [(1, "ContractViolationError"), (3, "EventIdConflict"),
                                            (4, "DecodeError")]
    assert [v for _, _, v in dead] == [values[1], values[3], b"not avro"]
    assert offsets == [(HEALTH.name, 0, 6)]


def test_a_replay_from_the_archive_starts_at_an_offset_or_a_time(tmp_path):
    from datetime import UTC, datetime

    root = tmp_path / "archive"
    archived(root, health_messages(["run-a"] * 4))  # timestamps T, T+1 ms, ...
    archived(root, health_messages(["run-a"], partition=1, start=7))

    def offsets(selection) -> list[tuple[int, int]]:
        return [(p, o) for _, typed, _ in selection.items(lambda n: None) if typed is not None
                for p, o in zip(typed.column("kafka_partition").to_pylist(), typed.column("kafka_offset").to_pylist(),
                                strict=True)]

    reader = ArchiveReader(root)
    assert offsets(reader.select("run-a")) == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 7)]
    assert offsets(reader.select("run-a", from_offset=3)) == [(0, 3), (1, 7)]
    since = datetime.fromtimestamp(1_700_000_000.002, UTC)
    later = reader.select("run-a", from_time=since)
    assert offsets(later) == [(0, 2), (0, 3)] and later.run_rows == 2 and later.ends == {(HEALTH.name, 0): 4}
    assert reader.select("run-b").run_rows == 0


@pytest.mark.parametrize("damage", ["foreign", "retyped", "corrupt"])
def test_a_foreign_retyped_or_corrupt_archive_file_is_one_line_not_wrong_rows(tmp_path, damage):
    import pyarrow as pa

    root = tmp_path / "archive"
    archived(root, health_messages(["run-a"] * 3))
    folder = root / f"topic={HEALTH.name}" / "run_id=run-a"
    bad = folder / "part-0-100.parquet"
    if damage == "foreign":  # some other Parquet file: no Kafka coordinates
        pq.write_table(pa.table({"event_id": ["x"], "epoch": [1]}), bad)
    elif damage == "retyped":  # an archive file whose epoch column is text
        rows = pq.read_table(next(folder.glob("*.parquet")))
        index = rows.schema.get_field_index("epoch")
        pq.write_table(rows.set_column(index, "epoch", rows.column("epoch").cast(pa.string())), bad)
    else:
        bad.write_bytes(b"PAR1 not really a Parquet file PAR1")
    with pytest.raises(ArchiveError) as raised:
        ArchiveReader(root).select("run-a")
    message = str(raised.value)
    assert "\n" not in message
    assert {"foreign": "is not an archive file of health_signal: it has no column",
            "retyped": "column epoch is VARCHAR, the table's is BIGINT",
            "corrupt": "unreadable archive file"}[damage] in message
