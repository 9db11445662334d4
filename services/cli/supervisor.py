"""Supervision of Esper's services: start each as a process, restart it when it dies.

``esper up`` starts one detached supervisor (``esper supervise``); the supervisor runs
``python -m services.cli -v serve NAME`` for every service, appending each one's output to
``<state>/logs/NAME.log``, and restarts a service that exits without being asked to, after
a back-off that doubles while it keeps dying young (1 s, 2 s, ... up to 30 s), so a
misconfigured service cannot spin. Its view of the world is written atomically to
``<state>/supervisor.json`` after every change; ``esper status`` reads it. SIGTERM stops
every service (SIGTERM, then SIGKILL after a grace period) and then the supervisor.

The services die with the supervisor, however it ends: they stay in its process group (the
group ``esper up`` made it lead, so ``killpg`` reaches them all), and on Linux each one asks
the kernel for SIGTERM when its parent dies (``prctl(PR_SET_PDEATHSIG)``), so even a
``kill -9`` of the supervisor leaves no service behind to run twice beside the next ``esper
up``. SIGTERM, not SIGKILL: each service then stops as cleanly as on ``esper down``.

The status file records every pid with its command line; ``read_status`` believes a pid
only while ``/proc/PID/cmdline`` still matches (``process_identity``), so a stale file never
gets an unrelated process signalled.

A service can run as several instances (``ESPER_SERVICES__TAMIYO__INSTANCES=3``): each is a process
of its own (``serve NAME --instance I``, hence its own transactional id), logged to ``NAME-I.log``
and restarted on its own; they share the service's consumer group, so its partitions are shared out
among them. The status file lists each service's instances (pid, restarts) under its name.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from services.cli.process_identity import is_running, own_command_line
from services.core.paths import REPO_ROOT

log = logging.getLogger(__name__)

SERVICES = ("nissa", "tamiyo", "tezzeret", "urabrask", "karn")
YOUNG_S = 10.0  # a service that dies sooner than this after starting is backed off
MAX_BACKOFF_S = 30.0


def status_file(state_dir: Path) -> Path:
    return Path(state_dir) / "supervisor.json"


def log_file(state_dir: Path, name: str) -> Path:
    return Path(state_dir) / "logs" / f"{name}.log"


@dataclass
class ServiceState:
    pid: int | None = None
    started_at: str | None = None
    restarts: int = 0
    last_exit: int | None = None
    next_start: float = 0.0  # monotonic time of the next (re)start
    backoff_s: float = 0.0
    cmdline: list[str] = field(default_factory=list)  # what `pid` runs: checked before anyone signals it


def service_command(name: str, instance: int = 1) -> list[str]:
    return [sys.executable, "-m", "services.cli", "-v", "serve", name, "--instance", str(instance)]


def unit_names(instances: dict[str, int]) -> dict[str, tuple[str, int]]:
    """Each process the supervisor runs: its label (the service's name when it runs alone, else
    ``NAME-I``) -> (service, instance)."""
    return {(name if count == 1 else f"{name}-{i}"): (name, i)
            for name, count in instances.items() for i in range(1, count + 1)}


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive ``sig`` when the process that started it dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here, in the parent: the child only calls it
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect: nobody would send the signal
            os.kill(os.getpid(), sig)

    return preexec


class Supervisor:
    def __init__(self, state_dir: Path, names: tuple[str, ...] = SERVICES,
                 command: Callable[[str, int], list[str]] = service_command, grace_s: float = 20.0,
                 instances: dict[str, int] | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.command = command
        self.grace_s = grace_s
        self.units = unit_names({name: (instances or {}).get(name, 1) for name in names})
        self.states = {label: ServiceState() for label in self.units}
        self.processes: dict[str, tuple[subprocess.Popen, float]] = {}  # name -> (process, started)
        self.cmdline = own_command_line()

    def _start(self, name: str) -> None:
        path = log_file(self.state_dir, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        command = self.command(*self.units[name])
        # In the supervisor's process group (no new session), and SIGTERM when the supervisor dies.
        with open(path, "ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env, cwd=REPO_ROOT, preexec_fn=die_with_parent())
        state = self.states[name]
        state.pid, state.started_at = process.pid, datetime.now(UTC).isoformat(timespec="seconds")
        state.cmdline = list(command)
        self.processes[name] = (process, time.monotonic())
        log.info("started service=%s pid=%d", name, process.pid)

    def step(self) -> bool:
        """Start what is due, notice what died; returns whether anything changed."""
        changed = False
        now = time.monotonic()
        for name, state in self.states.items():
            running = self.processes.get(name)
            if running is None:
                if now >= state.next_start:
                    self._start(name)
                    changed = True
                continue
            process, started = running
            code = process.poll()
            if code is None:
                continue
            del self.processes[name]
            young = now - started < YOUNG_S
            state.backoff_s = min(MAX_BACKOFF_S, max(1.0, state.backoff_s * 2)) if young else 1.0
            state.pid, state.last_exit, state.restarts = None, code, state.restarts + 1
            state.next_start = now + state.backoff_s
            log.warning("service=%s exited code=%s; restarting in %.0fs (restart %d)", name, code, state.backoff_s,
                        state.restarts)
            changed = True
        return changed

    def write_status(self) -> None:
        path = status_file(self.state_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"pid": os.getpid(), "cmdline": self.cmdline,
                "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "services": self._services()}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(path)

    def _services(self) -> dict[str, dict]:
        """Per service: its instances (pid, restarts, ...), and the first instance's fields with the restarts
        of all (the shape of a service that runs alone)."""
        grouped: dict[str, dict] = {}
        for label, (name, instance) in self.units.items():
            state = {k: v for k, v in asdict(self.states[label]).items() if k not in ("next_start", "backoff_s")}
            entry = grouped.setdefault(name, {**state, "restarts": 0, "instances": {}})
            entry["instances"][str(instance)] = state
            entry["restarts"] += state["restarts"]
        return grouped

    def stop_all(self) -> None:
        for process, _ in self.processes.values():
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for name, (process, _) in list(self.processes.items()):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("service=%s did not stop within %.0fs; killing it", name, self.grace_s)
                process.kill()
                process.wait()
            self.states[name].pid = None
        self.processes.clear()

    def run(self, should_stop: Callable[[], bool], tick_s: float = 0.2) -> None:
        self.write_status()
        try:
            while not should_stop():
                if self.step():
                    self.write_status()
                time.sleep(tick_s)  # the poll interval of child processes, not a synchronisation stand-in
        finally:
            self.stop_all()
            status_file(self.state_dir).unlink(missing_ok=True)


def load_status(state_dir: Path) -> dict | None:
    """What the status file says, true or stale (None: no file, or not one the supervisor wrote)."""
    try:
        data = json.loads(status_file(state_dir).read_text())
        int(data["pid"]), dict(data["services"])
    except (FileNotFoundError, ValueError, KeyError, TypeError, json.JSONDecodeError):
        return None
    return data


def supervisor_running(data: dict) -> bool:
    """Whether the status file's pid is still that supervisor (its command line, not just a live pid)."""
    from services.cli.process_identity import command_line

    pid, cmdline = int(data["pid"]), data.get("cmdline")
    if cmdline:
        return is_running(pid, cmdline)
    found = command_line(pid) or []  # a file of an older version, without command lines
    return "services.cli" in found and "supervise" in found


def read_status(state_dir: Path) -> dict | None:
    """The running supervisor's status, or None when no supervisor is alive; a service pid that is
    no longer that service (dead, or recycled for another process) reads as None."""
    data = load_status(state_dir)
    if data is None or not supervisor_running(data):
        return None
    for info in data["services"].values():
        for entry in [info, *info.get("instances", {}).values()]:
            if entry.get("pid") and not is_running(int(entry["pid"]), entry.get("cmdline") or []):
                entry["pid"] = None
    return data
