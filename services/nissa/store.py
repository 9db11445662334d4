"""The one DuckDB file: the writer side (tables, views, offsets, atomic batch writes) (read-only opens: ``opening.py``).

Exactly-once: every batch of rows and the Kafka positions it ends at
(``nissa_offsets``: topic, partition, next_offset) are written in ONE DuckDB transaction,
so after a crash the file holds either the whole batch and its offsets or neither, and
the sink resumes at the stored offsets.

DuckDB lets one process open a file read-write *or* any number of processes open it
read-only, never both at once. So the writer does not hold the file for ever: after a
commit it closes the file once it has held it ``hold_s`` seconds (and whenever the sink is
idle), and readers that find it locked retry for a while (``open_read_only(wait_s=...)``).

A newer schema version adds columns: ``create_schema`` appends to an older file's tables the
columns they lack (filled with the columns' defaults, as rows of the older writer schema get
them), and rows are inserted by column name (every column of the table, from the batch), so the
order of the columns in the file does not matter.

One writer per file (issue 11): ``create_schema`` takes the writer lock (``writer_lock.py``,
an flock beside the file, held until ``close``), and every ``write`` compares the stored
offsets with what this writer last read or wrote before it commits: if they moved, another
writer got in, and the write stops with WriterFencedError instead of storing anything twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import duckdb
import pyarrow as pa

from services.nissa.opening import retry_locked
from services.nissa.tables import Table
from services.nissa.views import create_views
from services.nissa.writer_lock import WriterFencedError, WriterLock

OFFSETS_DDL = (
    "CREATE TABLE IF NOT EXISTS nissa_offsets ("
    "topic VARCHAR NOT NULL, partition INTEGER NOT NULL, next_offset BIGINT NOT NULL, "
    "updated_at TIMESTAMPTZ NOT NULL DEFAULT now(), PRIMARY KEY (topic, partition))"
)


class NissaStore:
    """Writer of the database file (one per file): ``write`` commits rows + offsets atomically."""

    def __init__(self, path: Path, tables: Iterable[Table], hold_s: float = 2.0, lock_wait_s: float = 300.0) -> None:
        self.path = Path(path)
        self.tables = {t.name: t for t in tables}
        self.hold_s = hold_s
        self.lock_wait_s = lock_wait_s
        self._con: duckdb.DuckDBPyConnection | None = None
        self._opened_at = 0.0
        self._lock = WriterLock(self.path)
        self._expected: dict[tuple[str, int], int] | None = None  # the offsets this writer last saw stored

    def _connection(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._con = retry_locked(lambda: duckdb.connect(str(self.path)), self.path, self.lock_wait_s)
            self._opened_at = time.monotonic()
        return self._con

    def create_schema(self) -> None:
        """Take the writer lock, then tables (from the Avro schemas), the offsets table and the views; idempotent."""
        self._lock.acquire()
        con = self._connection()
        con.execute("BEGIN")
        for table in self.tables.values():
            con.execute(table.ddl())
            _add_missing_columns(con, table)
        con.execute(OFFSETS_DDL)
        create_views(con)
        con.execute("COMMIT")
        self._expected = self.offsets()

    def offsets(self) -> dict[tuple[str, int], int]:
        rows = self._connection().execute("SELECT topic, partition, next_offset FROM nissa_offsets").fetchall()
        return {(topic, partition): offset for topic, partition, offset in rows}

    def write(self, batches: Mapping[str, list[pa.Table]], offsets: Mapping[tuple[str, int], int],
              copies: Mapping[str, str] | None = None) -> int:
        """Insert every batch and upsert the offsets in one transaction; returns the rows written.

        ``copies`` maps tables to a query of their columns (``column_names``, in order) that DuckDB runs into
        them in the same transaction (a replay from the archive: ``archive_copy.py``).
        """
        con = self._connection()
        written = 0
        views: list[str] = []
        con.execute("BEGIN")
        try:
            self._check_fence(con)
            for name, parts in batches.items():
                table = self.tables[name]
                for part in parts:
                    view = f"_nissa_batch_{len(views)}"
                    con.register(view, part)
                    views.append(view)
                    columns = ", ".join(f'"{name}"' for name in table.column_names)
                    con.execute(f'INSERT INTO "{table.name}" ({columns}) SELECT {columns} FROM {view}')
                    written += part.num_rows
            for name, query in (copies or {}).items():
                columns = ", ".join(f'"{name}"' for name in self.tables[name].column_names)
                written += con.execute(f'INSERT INTO "{self.tables[name].name}" ({columns}) {query}').fetchall()[0][0]
            if offsets:
                con.executemany(
                    "INSERT INTO nissa_offsets (topic, partition, next_offset) VALUES (?, ?, ?) "
                    "ON CONFLICT (topic, partition) "
                    "DO UPDATE SET next_offset = excluded.next_offset, updated_at = now()",
                    [(topic, partition, offset) for (topic, partition), offset in offsets.items()],
                )
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            # After the rollback: in an aborted transaction DuckDB refuses even this, and the first error would be lost.
            for view in views:
                con.unregister(view)
        if self._expected is not None:
            self._expected.update(offsets)
        if time.monotonic() - self._opened_at >= self.hold_s:
            self.release()
        return written

    def _check_fence(self, con: duckdb.DuckDBPyConnection) -> None:
        """Stop before committing when the stored offsets are not the ones this writer left."""
        if self._expected is None:
            return
        rows = con.execute("SELECT topic, partition, next_offset FROM nissa_offsets").fetchall()
        stored = {(topic, partition): offset for topic, partition, offset in rows}
        if stored != self._expected:
            moved = sorted(key for key in stored.keys() | self._expected.keys()
                           if stored.get(key) != self._expected.get(key))
            topic, partition = moved[0]
            raise WriterFencedError(
                f"another writer committed to {self.path}: {topic}[{partition}] is stored at offset "
                f"{stored.get((topic, partition))}, this sink left it at {self._expected.get((topic, partition))} "
                f"({len(moved)} partitions moved); stopping so that nothing is stored twice")

    def stored_events(self, table: str, event_ids: list[str]) -> pa.Table:
        """The stored rows of ``table`` whose event id is one of ``event_ids``."""
        con = self._connection()
        con.register("_nissa_event_ids", pa.table({"event_id": pa.array(event_ids, pa.string())}))
        try:
            return con.sql(f'SELECT * FROM "{self.tables[table].name}" '
                           "WHERE event_id IN (SELECT event_id FROM _nissa_event_ids)").to_arrow_table()
        finally:
            con.unregister("_nissa_event_ids")

    def event_ids(self, table: str, batch_rows: int = 1_000_000) -> Iterator[pa.Array]:
        """Every stored event id of ``table``, in Arrow chunks."""
        reader = self._connection().sql(f'SELECT event_id FROM "{self.tables[table].name}"').to_arrow_reader(batch_rows)
        for chunk in reader:
            yield chunk.column(0)

    def connection(self) -> duckdb.DuckDBPyConnection:
        """The open connection (opened if need be), for reads beside ``write`` by the one thread writing."""
        return self._connection()

    def release(self) -> None:
        """Close the file so that readers can open it; the next write reopens it (the writer lock stays)."""
        if self._con is not None:
            self._con.close()
            self._con = None

    def close(self) -> None:
        """Close the file and give up the writer lock."""
        self.release()
        self._lock.release()


def table_columns(con: duckdb.DuckDBPyConnection, name: str) -> list[str]:
    """The columns of table (or view) ``name`` as the database holds it."""
    return [row[0] for row in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema = current_schema() "
        "AND table_name = ? ORDER BY ordinal_position", [name]).fetchall()]


def _add_missing_columns(con: duckdb.DuckDBPyConnection, table: Table) -> None:
    """Append the columns of ``table`` that the stored table lacks (written before a schema version added
    them); the rows already there get the column's default."""
    stored = set(table_columns(con, table.name))
    for column in table.columns:
        if column.name in stored:
            continue
        con.execute(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {column.sql_type}')
        if column.default is not None:
            con.register("_nissa_default", pa.table({"value": pa.array([column.default], column.arrow_type)}))
            try:
                con.execute(f'UPDATE "{table.name}" SET "{column.name}" = (SELECT value FROM _nissa_default)')
            finally:
                con.unregister("_nissa_default")
