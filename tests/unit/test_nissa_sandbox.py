"""`esper sql` is sandboxed: it reads the database (or archive) it was pointed at and nothing else, prints bus
strings as text, and a long query never keeps the sink's writer out of the file (no broker)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from services.cli import main as esper_main
from services.nissa.errors import QueryError
from services.nissa.queries import run_archive_query, run_query
from services.nissa.sandbox import SNAPSHOT_DIR, lock_down, snapshot
from services.nissa.sink import sink_tables
from services.nissa.store import NissaStore
from tests.esper_cli import ESPER, REPO, esper_env
from tests.unit.test_nissa_archive import archived, health_messages
from tests.waiting import wait_until

ATTEMPTS = [
    "SELECT * FROM read_csv('/etc/hostname')",
    "COPY (SELECT 42) TO 'out.csv'",
    "EXPORT DATABASE 'x'",
    "ATTACH '{outside}' (READ_WRITE)",
    "SET enable_external_access=true",
    "RESET lock_configuration",
    "INSTALL httpfs",
    "LOAD httpfs",
    "SELECT * FROM read_blob('{outside}')",
    "SELECT * FROM 'https://example.com/data.csv'",
    "SELECT 1; COPY (SELECT 42) TO 'out.csv'",
]


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "state" / "esper.duckdb"
    path.parent.mkdir()
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE notes AS SELECT 'plain' AS text UNION ALL SELECT '[bold red]x[/]' UNION ALL "
                    "SELECT '[/]'")
    return path


@pytest.fixture
def outside(tmp_path):
    path = tmp_path / "outside.duckdb"
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE secret AS SELECT 1 AS x")
    return path


@pytest.mark.parametrize("sql", ATTEMPTS)
def test_every_escape_attempt_is_one_line_and_exit_1(db, outside, tmp_path, monkeypatch, capsys, sql):
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert esper_main(["sql", sql.format(outside=outside), "--db", str(db)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("esper: error: ") and captured.err.count("\n") == 1, captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "nothing was written"
    with duckdb.connect(str(outside), read_only=True) as con:
        assert con.execute("SELECT * FROM secret").fetchall() == [(1,)]


@pytest.mark.parametrize("sql", [
    "SELECT * FROM read_csv('/etc/hostname')",
    "COPY (SELECT 42) TO '{tmp}/out.csv'",
    "EXPORT DATABASE '{tmp}/x'",
    "ATTACH '{outside}' AS other (READ_WRITE)",
    "SET enable_external_access = true",
    "SET allowed_directories = ['/']",
    "RESET lock_configuration",
    "SELECT * FROM 'https://example.com/data.csv'",
    "INSTALL httpfs",
    "LOAD httpfs",
])
def test_duckdb_itself_refuses_them_on_a_locked_down_connection(db, outside, tmp_path, sql):
    """The statement filter is one layer; the connection's own settings hold without it."""
    with snapshot(db) as con, pytest.raises(duckdb.Error):
        con.execute(sql.format(tmp=tmp_path, outside=outside))
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "x").exists()


def test_bus_strings_are_printed_as_text_not_markup(db, capsys):
    assert esper_main(["sql", "SELECT '[/]'", "--db", str(db)]) == 0
    assert "[/]" in capsys.readouterr().out
    assert esper_main(["sql", "SELECT text FROM notes", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "[bold red]x[/]" in out and "[/]" in out and "3 row(s)" in out


def test_queries_still_read_the_database_and_leave_no_snapshot_behind(db):
    assert run_query(db, "SELECT count(*) FROM notes").rows == [(3,)]
    assert run_query(db, "SHOW TABLES").rows == [("notes",)]
    assert list((db.parent / SNAPSHOT_DIR).iterdir()) == []


def test_a_killed_readers_snapshot_is_removed_by_the_next_reader(db):
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = db.parent / SNAPSHOT_DIR / f"{dead.pid}-abc"
    orphan.mkdir(parents=True)
    (orphan / db.name).write_bytes(b"old copy")
    run_query(db, "SELECT 1")
    assert not orphan.exists()


def test_the_archive_is_the_one_folder_an_archive_query_reads(tmp_path):
    root = tmp_path / "archive"
    archived(root, health_messages(["run-a", "run-b", "run-a"]))
    (tmp_path / "archive-old").mkdir()
    (tmp_path / "archive-old" / "x.csv").write_text("a\n1\n")
    assert run_archive_query(root, "SELECT run_id, count(*) FROM health_signal GROUP BY 1 ORDER BY 1").rows == [
        ("run-a", 2), ("run-b", 1)]
    files = run_archive_query(root, f"SELECT count(*) FROM glob('{root}/**/*.parquet')").rows
    assert files[0][0] >= 1, "inside the archive, files can be read"
    for sql, match in [(f"SELECT * FROM read_csv('{tmp_path}/archive-old/x.csv')", "reads only"),
                       ("SELECT * FROM read_csv('/etc/hostname')", "reads only"),
                       (f"COPY (SELECT 42) TO '{root}/out.csv'", "only runs queries")]:
        with pytest.raises(QueryError, match=match) as info:
            run_archive_query(root, sql)
        assert "\n" not in str(info.value)
    assert not (root / "out.csv").exists()


def test_archive_connections_are_locked_down_below_the_statement_filter(tmp_path):
    from services.nissa.archive import archive_connection

    root = tmp_path / "archive"
    archived(root, health_messages(["run-a"]))
    con = lock_down(archive_connection(root), allowed_directories=[root])
    try:
        for sql in ("SELECT * FROM read_csv('/etc/hostname')", "SET enable_external_access = true",
                    f"COPY (SELECT 1) TO '{tmp_path}/out.csv'"):
            with pytest.raises(duckdb.Error):
                con.execute(sql)
        assert con.execute("SELECT count(*) FROM health_signal").fetchone() == (1,)
    finally:
        con.close()


def _open_files(pid: int) -> set[str]:
    fds = Path(f"/proc/{pid}/fd")
    names = set()
    for fd in fds.iterdir() if fds.exists() else ():
        try:
            names.add(os.readlink(fd))
        except OSError:
            continue
    return names


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="watches the reader's open files in /proc")
def test_a_long_query_does_not_keep_the_writer_out(tmp_path):
    """While `esper sql` runs a query that would take minutes, the sink's writer keeps committing."""
    db = tmp_path / "esper.duckdb"
    # hold_s=0: lets go of the file after every commit, as the sink does when idle.
    store = NissaStore(db, sink_tables(), hold_s=0.0, lock_wait_s=30.0)
    store.create_schema()
    store.write({}, {("t", 0): 0})
    long_query = "SELECT sum(hash(a.range * b.range)) FROM range(1000000) a, range(1000000) b"
    reader = subprocess.Popen([*ESPER, "sql", long_query, "--db", str(db)], env=esper_env(), cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The reader is in its query once it has a database file open (the live one, or its snapshot).
        def in_query() -> bool:
            assert reader.poll() is None, reader.communicate()
            return any(name.endswith(".duckdb") for name in _open_files(reader.pid))

        wait_until(in_query, 60, "the reader opening the database")
        for offset in range(1, 6):  # each write waits at most lock_wait_s for the file, then fails the test
            store.write({}, {("t", 0): offset})
        assert reader.poll() is None, "the query was still running while the writer committed"
        assert store.offsets() == {("t", 0): 5}
    finally:
        reader.kill()
        reader.communicate()
        store.close()


def test_a_snapshot_keeps_what_a_killed_writer_left_in_its_wal(tmp_path):
    db = tmp_path / "esper.duckdb"
    killed_writer = ("import duckdb, os, sys\n"
                     "con = duckdb.connect(sys.argv[1]); con.execute(\"SET checkpoint_threshold = '10GB'\")\n"
                     "con.execute('CREATE TABLE t AS SELECT 1 AS x'); con.execute('CHECKPOINT')\n"
                     "con.execute('INSERT INTO t VALUES (2)'); os._exit(0)")
    subprocess.run([sys.executable, "-c", killed_writer, str(db)], check=True)
    assert db.with_name(db.name + ".wal").exists(), "the committed insert is only in the WAL"
    assert run_query(db, "SELECT x FROM t ORDER BY x").rows == [(1,), (2,)]
