"""One Nissa writer per database (the lock and the offsets fence) and no crash loop on one record."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from services.nissa.batch import Batch
from services.nissa.opening import open_read_only
from services.nissa.store import NissaStore
from services.nissa.writer_lock import WriterFencedError, WriterLockedError, lock_path
from services.oona.topic_registry import topic_spec
from tests.samples import health_signal, message_for
from tests.unit.nissa_fakes import CODEC, TABLES, Message, commit_all, new_batch, new_store

REPO_ROOT = Path(__file__).resolve().parents[2]
HEALTH = topic_spec("telemetry.seed.health")
REPORTS = topic_spec("innovation.field_reports")


def health(i: int) -> bytes:
    return CODEC.encode(HEALTH, HEALTH.message_type(sender_id="t", topic=HEALTH.name, run_id="run-1",
                                                    payload=health_signal(epoch=i)))


def write_one(store: NissaStore, offset: int) -> int:
    batch = new_batch()
    batch.add([Message(HEALTH.name, 0, offset, health(offset))])
    return store.write(batch.drain(), {(HEALTH.name, 0): offset + 1})


def test_a_second_writer_is_refused_while_the_first_lives_and_readers_still_get_in(tmp_path):
    db = tmp_path / "nissa.duckdb"
    first = new_store(db)
    write_one(first, 0)
    first.release()  # the file is free for readers between commits; the writer lock is not
    second = NissaStore(db, TABLES)
    with pytest.raises(WriterLockedError, match=r"another Nissa sink \(pid \d+\) is writing .*nissa.duckdb"):
        second.create_schema()
    with open_read_only(db) as con:
        assert con.execute("SELECT count(*) FROM health_signal").fetchone() == (1,)
    write_one(first, 1)
    first.close()
    second.create_schema()  # the first one let go: the next writer may start
    assert second.offsets() == {(HEALTH.name, 0): 2}
    second.close()


def test_the_lock_is_per_process_and_dies_with_it(tmp_path):
    db = tmp_path / "nissa.duckdb"
    code = textwrap.dedent(f"""
        import sys
        from services.nissa.writer_lock import WriterLock
        WriterLock({str(db)!r}).acquire()
        print("locked", flush=True)
        sys.stdin.read()
    """)
    env = os.environ | {"PYTHONPATH": str(REPO_ROOT)}
    with subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                          cwd=REPO_ROOT, env=env) as holder:
        try:
            assert holder.stdout.readline() == "locked\n"  # blocks until the child holds the lock
            with pytest.raises(WriterLockedError, match=f"pid {holder.pid}"):
                NissaStore(db, TABLES).create_schema()
        finally:
            holder.kill()
            holder.wait(timeout=30)
    store = new_store(db)  # a killed writer leaves no stale lock
    store.close()
    assert lock_path(db).exists()


def test_a_write_stops_when_another_writer_moved_the_stored_offsets(tmp_path):
    db = tmp_path / "nissa.duckdb"
    store = new_store(db)
    write_one(store, 0)
    store.release()
    with duckdb.connect(str(db)) as intruder:  # a writer that did not take the lock (an older sink, NFS, ...)
        intruder.execute("UPDATE nissa_offsets SET next_offset = 7")
    with pytest.raises(WriterFencedError, match=r"another writer committed to .*\[0\] is stored at offset 7, "
                                                r"this sink left it at 1"):
        write_one(store, 1)
    store.close()
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM health_signal").fetchone() == (1,)


class PoisonBatch(Batch):
    """Decoding raises (as an unforeseen decoder bug would) when a value contains b'poison'."""

    def decode(self, pending):
        for messages in pending.values():
            for m in messages:
                if m.value() and b"poison" in m.value():
                    raise RuntimeError("decoder bug on purpose")
        return super().decode(pending)


class BadRowBatch(Batch):
    """Decoding 'succeeds' but hands DuckDB a row it refuses (an INSERT failure) for a value containing b'badrow'."""

    def decode(self, pending):
        out = super().decode(pending)
        if any(b"badrow" in (m.value() or b"") for ms in pending.values() for m in ms):
            out.setdefault("dead_letters", []).append(pa.table({"source_topic": ["x"], "reason": ["too few columns"]}))
        return out


@pytest.mark.parametrize("batch_cls, marker, error_type", [(PoisonBatch, b"poison", "RuntimeError"),
                                                            (BadRowBatch, b"badrow", "BinderException")])
def test_one_failing_record_is_dead_lettered_and_the_rest_is_stored(tmp_path, batch_cls, marker, error_type):
    db = tmp_path / "nissa.duckdb"
    messages = [Message(HEALTH.name, i % 2, i, health(i)) for i in range(40)]
    messages[13] = Message(HEALTH.name, 1, 13, marker)
    later = [Message(HEALTH.name, 0, 40 + i, health(40 + i)) for i in range(5)]
    store = new_store(db)
    try:
        committer = commit_all([(messages, {(HEALTH.name, 0): 40, (HEALTH.name, 1): 41}),
                                (later, {(HEALTH.name, 0): 45})], store, batch=new_batch(batch_cls))
        assert committer.dead_lettered == 1 and committer.error is None
        assert store.offsets() == {(HEALTH.name, 0): 45, (HEALTH.name, 1): 41}
    finally:
        store.close()
    with duckdb.connect(str(db), read_only=True) as con:
        offsets = [o for (o,) in con.execute("SELECT kafka_offset FROM health_signal ORDER BY 1").fetchall()]
        assert offsets == [i for i in range(45) if i != 13]
        dead = con.execute("SELECT source_offset, error_type, reason, original_value, origin FROM dead_letters"
                           ).fetchall()
    assert len(dead) == 1 and dead[0][0] == 13 and dead[0][1] == error_type and dead[0][3] == marker
    assert dead[0][2].startswith(f"nissa could not store this record: {error_type}: ") and dead[0][4] == "nissa"


def test_a_varint_beyond_64_bits_on_a_row_decoded_topic_does_not_stop_the_sink(tmp_path):
    """Issue 11: the row decoder's OverflowError escaped the per-row try and crash-looped the sink."""
    value = CODEC.encode(REPORTS, message_for(REPORTS).model_copy(
        update={"payload": message_for(REPORTS).payload.model_copy(update={"epochs_active": 1234567})}))
    varint = bytes([0x8E, 0xDA, 0x96, 0x01])  # zigzag(1234567)
    assert value.count(varint) == 1
    crafted = value.replace(varint, b"\xfe" + b"\xff" * 8 + b"\x7f")  # 10 bytes, far above 2**64
    messages = [Message(REPORTS.name, 0, 0, CODEC.encode(REPORTS, message_for(REPORTS))),
                Message(REPORTS.name, 0, 1, crafted),
                Message(REPORTS.name, 0, 2, CODEC.encode(REPORTS, message_for(REPORTS)))]
    db = tmp_path / "nissa.duckdb"
    store = new_store(db)
    try:
        commit_all([(messages, {(REPORTS.name, 0): 3})], store)
        assert store.offsets() == {(REPORTS.name, 0): 3}
    finally:
        store.close()
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT kafka_offset FROM field_report ORDER BY 1").fetchall() == [(0,), (2,)]
        assert con.execute("SELECT source_offset, origin FROM dead_letters").fetchall() == [(1, "nissa")]


def test_errors_of_the_database_itself_are_not_dead_lettered(tmp_path):
    """A store that cannot write must stop the sink, not dead-letter every record of the batch."""
    store = new_store(tmp_path / "nissa.duckdb")

    def broken(tables, offsets):
        raise duckdb.IOException("disk full on purpose")

    store.write = broken
    batch = new_batch()
    with pytest.raises(duckdb.IOException, match="disk full"):
        commit_all([([Message(HEALTH.name, 0, 0, health(0))], {(HEALTH.name, 0): 1})], store, batch=batch)
    store.close()


def test_fencing_stops_the_committer_instead_of_dead_lettering_the_batch(tmp_path):
    db = tmp_path / "nissa.duckdb"
    store = new_store(db)
    write_one(store, 0)
    store.release()
    with duckdb.connect(str(db)) as intruder:
        intruder.execute("UPDATE nissa_offsets SET next_offset = 7")
    with pytest.raises(WriterFencedError):
        commit_all([([Message(HEALTH.name, 0, 1, health(1))], {(HEALTH.name, 0): 2})], store)
    store.close()
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM dead_letters").fetchone() == (0,)
        assert con.execute("SELECT count(*) FROM health_signal").fetchone() == (1,)
