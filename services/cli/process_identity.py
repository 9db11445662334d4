"""Is pid N still the process that was started? Its command line decides, before any signal.

A pid file outlives its process, and the kernel hands the number to the next process that
asks: after a crash or a reboot, ``supervisor.json`` may name a pid that is now a shell, an
editor or nothing. So whoever signals a pid it read from a file first compares the process's
command line (``/proc/PID/cmdline``; ``ps`` where there is no /proc) with the one recorded
when it was started; a zombie counts as gone.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path


def command_line(pid: int) -> list[str] | None:
    """The process's argv, or None when no such process runs (a zombie included)."""
    if pid <= 0:
        return None
    proc = Path(f"/proc/{pid}")
    if Path("/proc/self").exists():
        try:
            if (proc / "stat").read_text().rsplit(") ", 1)[1].startswith("Z"):
                return None
            raw = (proc / "cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return None
        except PermissionError:
            return []  # someone else's process: it runs, and it is not ours
        return [part.decode(errors="replace") for part in raw.split(b"\0")[:-1]] if raw else []
    try:  # no /proc (macOS): ps splits the arguments on spaces, which ours do not contain
        out = subprocess.run(["ps", "-o", "stat=,command=", "-p", str(pid)], capture_output=True, text=True,
                             check=False).stdout.strip()
    except OSError:
        return None
    if not out or out.startswith("Z"):
        return None
    return out.split()[1:]


def is_running(pid: int, cmdline: Sequence[str]) -> bool:
    """Whether ``pid`` runs and is the process started as ``cmdline``."""
    return bool(cmdline) and command_line(pid) == list(cmdline)


def describe(pid: int) -> str:
    """What ``pid`` is now, for a one-line message."""
    found = command_line(pid)
    if found is None:
        return f"pid {pid} is not running"
    text = " ".join(found) or "a process of another user"
    return f"pid {pid} is now `{text[:80]}{'...' if len(text) > 80 else ''}`"


def own_command_line() -> list[str]:
    return command_line(os.getpid()) or list(sys.orig_argv)
