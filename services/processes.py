"""Background service processes for `esper up` / `esper down` / `esper status`.

Each service runs as ``python -m services.cli serve NAME`` in its own session, logging to
``<state>/logs/NAME.log`` with its pid in ``<state>/pids/NAME.pid``. ``stop`` sends SIGTERM
(the services shut down cleanly: close the consumer, finish or abort the transaction).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from services.oona.local_broker import REPO_ROOT

SERVICES = ("nissa", "tamiyo", "tezzeret", "urabrask", "karn")


def _pid_file(state_dir: Path, name: str) -> Path:
    return Path(state_dir) / "pids" / f"{name}.pid"


def log_file(state_dir: Path, name: str) -> Path:
    return Path(state_dir) / "logs" / f"{name}.log"


def running_pid(state_dir: Path, name: str) -> int | None:
    try:
        pid = int(_pid_file(state_dir, name).read_text())
        os.kill(pid, 0)
    except (FileNotFoundError, ValueError, ProcessLookupError):
        return None
    try:
        if f"serve\x00{name}".encode() not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return None  # the pid was recycled by another program
    except OSError:
        pass
    return pid


def start(state_dir: Path, name: str) -> tuple[int, bool]:
    """Start ``name`` unless it runs; returns (pid, started_now)."""
    pid = running_pid(state_dir, name)
    if pid is not None:
        return pid, False
    log = log_file(state_dir, name)
    log.parent.mkdir(parents=True, exist_ok=True)
    _pid_file(state_dir, name).parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.cli", "-v", "serve", name], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=REPO_ROOT,
                                start_new_session=True)
    _pid_file(state_dir, name).write_text(str(proc.pid))
    proc.returncode = 0  # detached on purpose: it outlives this command, do not warn about it
    return proc.pid, True


def stop(state_dir: Path, name: str, timeout_s: float = 30.0) -> bool:
    pid = running_pid(state_dir, name)
    if pid is None:
        _pid_file(state_dir, name).unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, signal.SIGKILL)
    _pid_file(state_dir, name).unlink(missing_ok=True)
    return True
