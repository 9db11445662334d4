"""The detached supervisor behind `esper up` / `esper down` / `esper status`.

``start`` launches ``esper supervise`` in its own session (it outlives the command), logging
to ``<state>/logs/supervisor.log``; the supervisor runs and restarts the services (see
``services.cli.supervisor``). ``stop`` sends it SIGTERM and waits: it stops every service
cleanly (consumers closed, transactions finished or aborted) before exiting.

Neither trusts the pid in ``supervisor.json`` blindly: a pid whose command line is not the
supervisor's (it died and the number went to another process) makes the file stale; ``start``
then starts a fresh supervisor, and ``stop`` says so, removes the file and signals nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from services.cli.process_identity import describe
from services.cli.supervisor import load_status, log_file, read_status, status_file, supervisor_running
from services.core.errors import EsperError
from services.core.paths import REPO_ROOT


class SupervisorError(EsperError):
    pass


def start(state_dir: Path, timeout_s: float = 60.0) -> tuple[int, bool]:
    """Start the supervisor unless one runs; returns (pid, started_now)."""
    status = read_status(state_dir)
    if status is not None:
        return int(status["pid"]), False
    path = log_file(state_dir, "supervisor")
    path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(path, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "services.cli", "-v", "supervise"], stdout=out,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=REPO_ROOT,
                                   start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while read_status(state_dir) is None:  # wait until it wrote its first status
        if process.poll() is not None or time.monotonic() > deadline:
            tail = path.read_text(errors="replace").strip().splitlines()[-1:] if path.exists() else []
            raise SupervisorError(f"the supervisor did not start (see {path}): {' '.join(tail)}")
        time.sleep(0.1)
    process.returncode = 0  # detached on purpose: it outlives this command, do not warn about it
    return process.pid, True


STOPPED = "stopped"
NOT_RUNNING = "were not running"


def stop(state_dir: Path, timeout_s: float = 60.0) -> str:
    """Stop the supervisor and every service; returns what happened, in words (STOPPED, NOT_RUNNING, or why not)."""
    status = load_status(state_dir)
    if status is None:
        return NOT_RUNNING
    pid = int(status["pid"])
    if not supervisor_running(status):
        path = status_file(state_dir)
        path.unlink(missing_ok=True)
        return f"were not running: stale {path} ({describe(pid)}, not the supervisor); nothing signalled, file removed"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not supervisor_running(status):
            return STOPPED
        time.sleep(0.1)
    if supervisor_running(status):  # checked again: by now the pid could be another process's
        os.killpg(pid, signal.SIGKILL)  # the supervisor leads its session: this takes the services too
    return STOPPED
