"""`esper up` starts the supervised services beside the cluster, `esper status` reports them, `esper down`
stops them cleanly; a supervisor killed with SIGKILL takes its services with it, and the next `esper up` starts
exactly one set."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

from services.cli.process_identity import command_line
from services.cli.supervisor import SERVICES, read_status, service_command
from tests.esper_cli import esper_env, run_esper
from tests.waiting import wait_until


def test_up_status_down(kafka_bootstrap, tmp_path):
    env = esper_env(KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, ESPER_STATE_DIR=str(tmp_path),
                    ESPER_KAFKA__TOPIC_PREFIX=f"updown.{os.getpid()}.")

    def esper(*args):
        return run_esper(*args, env=env)

    try:
        up = esper("up")
        assert up.returncode == 0, up.stderr
        assert "external cluster" in up.stdout and "supervisor: started" in up.stdout
        again = esper("up")
        assert "supervisor: already running" in again.stdout, "idempotent"
        deadline = time.monotonic() + 120
        while (status := esper("status")).returncode != 0:
            assert time.monotonic() < deadline, status.stdout + status.stderr
        rows = {m.group(1): m.group(2) for m in re.finditer(r"│ (\w+)\s+│ (up|down)\s+│", status.stdout)}
        assert rows == {name: "up" for name in SERVICES}, status.stdout
        assert "lag (events)" in status.stdout
        logs = {name: tmp_path / "logs" / f"{name}.log" for name in SERVICES}
        while not all(f"service started name={name}" in path.read_text() for name, path in logs.items()):
            assert time.monotonic() < deadline, "a service never finished starting"
    finally:
        down = esper("down")
    assert down.returncode == 0 and "services: stopped" in down.stdout, down.stdout + down.stderr
    after = esper("status")
    assert after.returncode == 3 and "supervisor: down" in after.stdout
    for name in SERVICES:
        log = (tmp_path / "logs" / f"{name}.log").read_text()
        assert f"service stopped name={name}" in log, f"SIGTERM shuts {name} down cleanly"


def _services_of(state_dir: Path) -> dict[str, list[int]]:
    """Every live `serve NAME` process whose ESPER_STATE_DIR is ``state_dir``, by service name."""
    found: dict[str, list[int]] = {}
    wanted = f"ESPER_STATE_DIR={state_dir}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        cmdline = command_line(int(entry.name))
        # `... serve NAME --instance I`: the supervisor's command for a service, whatever its name and instance
        prefix = service_command("x")[:-3]
        if not cmdline or len(cmdline) != len(prefix) + 3 or cmdline[:len(prefix)] != prefix:
            continue
        try:
            if wanted not in (entry / "environ").read_bytes().split(b"\0"):
                continue
        except OSError:
            continue
        found.setdefault(cmdline[len(prefix)], []).append(int(entry.name))
    return found


def _every_service(state_dir: Path) -> dict[str, list[int]] | None:
    found = _services_of(state_dir)
    return found if set(found) == set(SERVICES) else None


def test_sigkill_of_the_supervisor_leaves_no_service_and_up_starts_exactly_one_set(kafka_bootstrap, tmp_path):
    env = esper_env(KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, ESPER_STATE_DIR=str(tmp_path),
                    ESPER_KAFKA__TOPIC_PREFIX=f"updown.{os.getpid()}.")
    try:
        assert (up := run_esper("up", env=env)).returncode == 0, up.stderr
        first = wait_until(lambda: _every_service(tmp_path), 120, "every service started")
        supervisor = read_status(tmp_path)["pid"]
        os.kill(supervisor, signal.SIGKILL)
        # A dying service leaves /proc/PID/cmdline empty before it is gone: wait until every old pid is gone too.
        wait_until(lambda: not _services_of(tmp_path) and all(command_line(pid) is None
                                                              for pids in first.values() for pid in pids),
                   60, "no service left running after SIGKILL of the supervisor")
        assert all(command_line(pid) is None for pids in first.values() for pid in pids)

        again = run_esper("up", env=env)
        assert again.returncode == 0 and "supervisor: started" in again.stdout, again.stdout + again.stderr
        second = wait_until(lambda: _every_service(tmp_path), 120, "every service started again")
        status = wait_until(lambda: read_status(tmp_path), 30, "the new supervisor's status")
        assert status["pid"] != supervisor
        assert {name: len(pids) for name, pids in second.items()} == {name: 1 for name in SERVICES}, second
        assert {name: pids[0] for name, pids in second.items()} == {
            name: info["pid"] for name, info in status["services"].items()}
    finally:
        down = run_esper("down", env=env)
    assert down.returncode == 0, down.stdout + down.stderr
    wait_until(lambda: not _services_of(tmp_path), 60, "no service left after esper down")
