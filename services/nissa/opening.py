"""Opening the Nissa DuckDB file: one writer or many readers, retrying while the other side holds the lock.

Kept apart from the writer (``store.py``) so that reading (``esper sql``, ``esper status``) loads neither pyarrow
nor the contracts.
"""

from __future__ import annotations

import time
from pathlib import Path

import duckdb

from services.nissa.errors import DatabaseMissingError, DatabaseUnreadableError

_LOCKED = "Could not set lock"


def retry_locked(open_fn, path: Path, wait_s: float):
    deadline = time.monotonic() + wait_s
    delay = 0.02
    while True:
        try:
            return open_fn()
        except duckdb.IOException as exc:
            if _LOCKED not in str(exc) or time.monotonic() >= deadline:
                raise DatabaseUnreadableError(f"cannot open {path}: {first_line(exc)}") from None
            time.sleep(delay)  # the other side holds the file lock: back off and retry
            delay = min(delay * 2, 0.25)
        except duckdb.Error as exc:
            raise DatabaseUnreadableError(f"cannot open {path}: {first_line(exc)}") from None


def open_read_only(path: Path, wait_s: float = 10.0) -> duckdb.DuckDBPyConnection:
    """A read-only connection; waits up to ``wait_s`` while the writer holds the file."""
    path = Path(path)
    if not path.is_file():
        raise DatabaseMissingError(path)
    return retry_locked(lambda: duckdb.connect(str(path), read_only=True), path, wait_s)


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
