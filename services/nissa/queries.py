"""Read-only queries on the Nissa database and their output formats (table, csv, json).

Every query opens its own read-only connection and closes it at once, so a reader never
keeps the running sink from writing for longer than the query takes.
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
from services.nissa.store import open_read_only

FORMATS = ("table", "csv", "json")

RUNS_QUERY = """
SELECT run_id, status, epochs, seeds_germinated AS germinated, seeds_fossilized AS fossilized,
       seeds_culled AS culled, round(final_validation_accuracy, 4) AS final_val_acc, started_at
FROM runs ORDER BY started_at NULLS LAST, run_id
"""


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple]


def run_query(db: Path, sql: str, wait_s: float = 10.0) -> QueryResult:
    """Run ``sql`` on a read-only connection; QueryError (one line) for bad SQL or a write."""
    if not sql.strip():
        raise QueryError("empty query")
    return _execute(open_read_only(db, wait_s=wait_s), sql)


def run_archive_query(archive: Path, sql: str) -> QueryResult:
    """Run ``sql`` over an ``esper archive`` folder (views named like the sink's tables); no broker needed."""
    from services.nissa.archive import archive_connection

    if not sql.strip():
        raise QueryError("empty query")
    return _execute(archive_connection(archive), sql)


def _execute(con: duckdb.DuckDBPyConnection, sql: str) -> QueryResult:
    """Run one statement and close the connection."""
    try:
        cursor = con.execute(sql)
        if cursor.description is None:
            return QueryResult([], [])
        return QueryResult([d[0] for d in cursor.description], cursor.fetchall())
    except duckdb.Error as exc:
        raise QueryError(_describe(exc)) from None
    finally:
        con.close()


def _describe(exc: duckdb.Error) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if "read-only mode" in text:
        return f"refused: the Nissa database is opened read-only ({text})"
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
        from rich.table import Table

        table = Table(show_lines=False)
        for column in result.columns:
            table.add_column(column, overflow="fold")
        for row in result.rows:
            table.add_row(*("NULL" if v is None else str(_plain(v)) for v in row))
        Console(file=out).print(table)
        out.write(f"{len(result.rows)} row(s)\n")
    else:
        raise QueryError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
