"""One Nissa writer per database: an exclusive lock held for the writer process's whole life.

DuckDB's own file lock cannot fence writers: the sink lets go of the file every few seconds
so that readers (``esper sql``, ``esper runs``) get in, and a second sink could take it then
and store every event again. So the writer also holds ``fcntl.flock(LOCK_EX)`` on a lock
file beside the database (``esper.duckdb.lock``) from its start until it stops; the kernel
drops it when the process dies, so a ``kill -9`` never leaves a stale lock. Readers never
touch it. The lock file holds the writer's pid, for the error message of the next one.

    FatalError
    ├── WriterLockedError    another process holds the lock: this one must not write
    └── WriterFencedError    the stored offsets moved under this writer: another one wrote
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from services.core.errors import FatalError


class WriterLockedError(FatalError):
    """Another Nissa writer holds the database."""


class WriterFencedError(FatalError):
    """The offsets stored in the database changed since this writer read them."""


def lock_path(db: Path) -> Path:
    db = Path(db)
    return db.with_name(db.name + ".lock")


class WriterLock:
    """``acquire`` or raise WriterLockedError; held until ``release`` or the process ends."""

    def __init__(self, db: Path) -> None:
        self.db = Path(db)
        self.path = lock_path(db)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise WriterLockedError(
                f"another Nissa sink (pid {holder}) is writing {self.db}; stop it first (`esper down`, or "
                f"kill {holder}); two writers would store every event twice") from None
        except OSError:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor drops the flock
