"""Read-only, sandboxed queries on the Nissa database and their output formats (table, csv, json).

Every query runs on its own snapshot of the database (``sandbox.snapshot``): the live file is
held only while it is copied, so a long query never keeps the running sink from committing,
and the connection reaches no file but that copy (or, for ``--archive``, the archive folder),
no network and no setting (``sandbox.lock_down``). Table output escapes rich's markup: the
strings come off the bus.
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO
from uuid import UUID

import duckdb

from services.nissa.errors import QueryError
from services.nissa.sandbox import check_statements, lock_down, snapshot

FORMATS = ("table", "csv", "json")

RUNS_QUERY = """
SELECT run_id, status, epochs, seeds_germinated AS germinated, seeds_fossilized AS fossilized,
       seeds_culled AS culled, round(final_validation_accuracy, 4) AS final_val_acc,
       parent_run_id AS forked_from, fork_epoch, started_at
FROM runs ORDER BY started_at NULLS LAST, run_id
"""


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple]


def run_query(db: Path, sql: str, wait_s: float = 10.0) -> QueryResult:
    """Run ``sql`` on a sandboxed snapshot of ``db``; QueryError (one line) for bad SQL or anything but a read."""
    check_statements(sql)
    with snapshot(db, wait_s=wait_s) as con:
        return _execute(con, sql)


def run_archive_query(archive: Path, sql: str) -> QueryResult:
    """Run ``sql`` over an ``esper archive`` folder (views named like the sink's tables); no broker needed."""
    from services.nissa.archive import archive_connection

    check_statements(sql)
    con = lock_down(archive_connection(archive), allowed_directories=[archive])
    try:
        return _execute(con, sql)
    finally:
        con.close()


def _execute(con: duckdb.DuckDBPyConnection, sql: str) -> QueryResult:
    try:
        cursor = con.execute(sql)
        if cursor.description is None:
            return QueryResult([], [])
        return QueryResult([d[0] for d in cursor.description], cursor.fetchall())
    except duckdb.Error as exc:
        raise QueryError(_describe(exc)) from None


def _describe(exc: duckdb.Error) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if "read-only mode" in text:
        return f"refused: the Nissa database is opened read-only ({text})"
    if isinstance(exc, duckdb.PermissionException) or "disabled by configuration" in text:
        return f"refused: `esper sql` reads only the database or archive it was pointed at ({text})"
    if "configuration has been locked" in text:
        return f"refused: `esper sql` settings are locked ({text})"
    return text


def list_runs(db: Path) -> QueryResult:
    return run_query(db, RUNS_QUERY)


def _plain(value: Any) -> Any:
    """A JSON-able form of a DuckDB value."""
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (Decimal, UUID)):
        return str(value) if isinstance(value, UUID) else float(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def write_result(result: QueryResult, fmt: str = "table", out: TextIO | None = None) -> None:
    out = out or sys.stdout
    if fmt == "csv":
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(result.columns)
        for row in result.rows:
            writer.writerow([json.dumps(_plain(v)) if isinstance(v, (dict, list)) else _plain(v) for v in row])
    elif fmt == "json":
        out.write(json.dumps([dict(zip(result.columns, map(_plain, row), strict=True)) for row in result.rows],
                             indent=2) + "\n")
    elif fmt == "table":
        from rich.console import Console
        from rich.markup import escape
        from rich.table import Table

        # Values (and column names: `SELECT '[/]'` names its column '[/]') are text off the bus, not markup.
        table = Table(show_lines=False)
        for column in result.columns:
            table.add_column(escape(column), overflow="fold")
        for row in result.rows:
            table.add_row(*("NULL" if v is None else escape(str(_plain(v))) for v in row))
        Console(file=out).print(table)
        out.write(f"{len(result.rows)} row(s)\n")
    else:
        raise QueryError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
