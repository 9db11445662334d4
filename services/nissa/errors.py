"""Nissa's errors: each one is printed by the CLI as a single line."""

from __future__ import annotations

from services.core.errors import EsperError


class NissaError(EsperError):
    """Base of Nissa's errors."""


class DatabaseMissingError(NissaError):
    def __init__(self, path: object) -> None:
        super().__init__(f"no Nissa database at {path} (run `esper serve nissa` first, or pass --db PATH)")


class DatabaseUnreadableError(NissaError):
    """The file exists but is not a DuckDB database DuckDB can open (corrupt, wrong format, locked)."""


class QueryError(NissaError):
    """Bad SQL, or a statement the read-only connection refuses (a write)."""


class UnknownRunError(NissaError):
    """No event of that run where it was looked for (the log, the archive or the database)."""


class ArchiveError(NissaError):
    """A missing, empty or unreadable archive folder."""
