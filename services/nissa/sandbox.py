"""The read side of Nissa, sandboxed: snapshots of the database and connections that touch nothing else.

``esper sql`` runs whatever SQL it is given, so its connection is closed around the data it
was pointed at (DuckDB's own settings, then locked so that no SET gives them back):

* ``enable_external_access = false``: no file but the database itself, no network, no
  ``ATTACH`` of another file, no ``COPY ... TO`` / ``EXPORT DATABASE``, no extension
  install or load; for ``--archive`` the archive folder is the one ``allowed_directories``;
* ``lock_configuration = true``: ``SET``/``RESET``/``PRAGMA x = y`` are refused;
* and before DuckDB sees it, only query statements pass (``SELECT``/``FROM``/``WITH``/
  ``SHOW``/``DESCRIBE``/``SUMMARIZE``, ``EXPLAIN``, ``CALL``, ``PRAGMA``): in an archive's
  allowed folder DuckDB itself would let a ``COPY ... TO`` write.

Readers never hold the live file while they query. DuckDB lets one process open a file
read-write *or* several open it read-only, never both; the sink lets go of the file between
commits, but a reader that kept it for a long query would keep the sink from committing for
as long. So ``snapshot`` opens the file read-only only to copy it (with its WAL, if a killed
writer left one), lets go, and the query runs on the copy: the writer waits for a file copy
at most (an in-kernel ``copy_file_range``, a reflink where the filesystem has them), never
for a query, and every query of one snapshot sees the same committed state.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import duckdb

from services.nissa.errors import QueryError
from services.nissa.opening import first_line, open_read_only

QUERY_STATEMENTS = frozenset(("SELECT", "EXPLAIN", "CALL", "PRAGMA"))
SNAPSHOT_DIR = ".sql-snapshots"  # beside the database: same filesystem, so the copy can be a reflink


def lock_down(con: duckdb.DuckDBPyConnection, allowed_directories: Sequence[Path] = ()) -> duckdb.DuckDBPyConnection:
    """Close ``con`` to every file but its database (and ``allowed_directories``), to the network and to SET."""
    if allowed_directories:
        # A trailing separator: "/a/archive" must not also allow "/a/archive-old".
        con.execute("SET allowed_directories = $dirs",
                    {"dirs": [str(Path(d).resolve()).rstrip(os.sep) + os.sep for d in allowed_directories]})
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def check_statements(sql: str) -> None:
    """QueryError (one line) unless ``sql`` is query statements only."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(first_line(exc)) from None
    if not statements:
        raise QueryError("empty query")
    for statement in statements:
        kind = statement.type.name
        if kind not in QUERY_STATEMENTS:
            verb = statement.query.strip().split(None, 1)[0].upper() if statement.query.strip() else kind
            raise QueryError(f"refused: `esper sql` only runs queries (SELECT, SHOW, DESCRIBE, EXPLAIN, ...), "
                             f"not {verb}")


@contextmanager
def snapshot(db: Path, wait_s: float = 10.0) -> Iterator[duckdb.DuckDBPyConnection]:
    """A sandboxed read-only connection on a copy of ``db`` taken while the writer had let go of it."""
    db = Path(db)
    folder = _snapshot_folder(db)
    try:
        copy = folder / db.name
        live = open_read_only(db, wait_s=wait_s)  # waits while the sink writes; the sink waits while we copy
        try:
            _copy(db, copy)
            wal = db.with_name(db.name + ".wal")
            if wal.is_file():  # a writer killed mid-way: its committed transactions are still in the WAL
                _copy(wal, copy.with_name(copy.name + ".wal"))
        finally:
            live.close()
        con = lock_down(open_read_only(copy, wait_s=0))
        try:
            yield con
        finally:
            con.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _snapshot_folder(db: Path) -> Path:
    """A fresh folder for one snapshot, beside the database (else in TMPDIR); leftovers of dead readers go."""
    parent = db.parent / SNAPSHOT_DIR
    try:
        parent.mkdir(exist_ok=True)
        _remove_orphans(parent)
        return Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=parent))
    except OSError:  # a read-only state folder: the system's temporary folder will do
        return Path(tempfile.mkdtemp(prefix=f"esper-sql-{os.getpid()}-"))


def _remove_orphans(parent: Path) -> None:
    """Snapshots of readers that were killed before they could remove theirs."""
    for entry in parent.iterdir():
        pid = entry.name.split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _copy(src: Path, dst: Path) -> None:
    """Copy in the kernel (copy_file_range: a reflink on btrfs/XFS), else through userspace."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        left = os.fstat(fin.fileno()).st_size
        try:
            while left > 0:
                done = os.copy_file_range(fin.fileno(), fout.fileno(), left)
                if done == 0:
                    break
                left -= done
            return
        except (AttributeError, OSError):  # no such call here, or not between these filesystems
            fin.seek(0)
            fout.seek(0)
            fout.truncate()
        shutil.copyfileobj(fin, fout, 1 << 20)
