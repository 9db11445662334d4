"""The supervisor restarts services that die, backing off while they keep dying young; its services die with it;
a stale pid file never gets an unrelated process signalled."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from services.cli import processes
from services.cli.process_identity import command_line, is_running
from services.cli.supervisor import Supervisor, load_status, read_status, status_file
from tests.esper_cli import REPO, esper_env, run_esper
from tests.waiting import wait_until

COMMANDS = {
    "crashy": [sys.executable, "-c", "import sys; sys.exit(3)"],
    "steady": [sys.executable, "-c", "import signal; signal.pause()"],  # runs until signalled
}


def command(name: str, _instance: int) -> list[str]:
    return COMMANDS[name]


def step_until(supervisor: Supervisor, condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        supervisor.step()


def test_a_dying_service_is_restarted_with_growing_back_off_and_the_others_keep_running(tmp_path):
    supervisor = Supervisor(tmp_path, names=("crashy", "steady"), command=command, grace_s=5)
    try:
        supervisor.step()
        steady_pid = supervisor.states["steady"].pid
        step_until(supervisor, lambda: supervisor.states["crashy"].restarts >= 2)
        crashy = supervisor.states["crashy"]
        assert crashy.last_exit == 3 and crashy.backoff_s == 2.0  # 1 s, then 2 s: it died young twice
        assert supervisor.states["steady"].pid == steady_pid and supervisor.states["steady"].restarts == 0
        supervisor.write_status()
        status = read_status(tmp_path)
        assert status["services"]["steady"]["pid"] == steady_pid
        assert status["services"]["crashy"]["restarts"] >= 2
        assert (tmp_path / "logs" / "steady.log").exists()
    finally:
        supervisor.stop_all()
    assert supervisor.processes == {} and supervisor.states["steady"].pid is None


SUPERVISE = """
import sys
from pathlib import Path
from services.cli.supervisor import Supervisor
steady = [sys.executable, "-c", "import signal; signal.pause()"]
Supervisor(Path(sys.argv[1]), names=("one", "two"), command=lambda name, instance: steady).run(lambda: False)
"""


def _service_pids(state_dir):
    status = load_status(state_dir)
    pids = [info.get("pid") for info in (status or {}).get("services", {}).values()]
    return pids if len(pids) == 2 and all(pids) else None


def test_the_services_die_with_the_supervisor_even_on_sigkill(tmp_path):
    supervisor = subprocess.Popen([sys.executable, "-c", SUPERVISE, str(tmp_path)], env=esper_env(), cwd=REPO)
    pids = []
    try:
        pids = wait_until(lambda: _service_pids(tmp_path), what="both services started")
        status = load_status(tmp_path)
        assert all(is_running(pid, info["cmdline"]) for pid, info in zip(pids, status["services"].values(),
                                                                          strict=True))
        os.kill(supervisor.pid, signal.SIGKILL)
        supervisor.wait()
        wait_until(lambda: all(command_line(pid) is None for pid in pids), what="no service left running")
        assert read_status(tmp_path) is None, "a dead supervisor's file is not believed"
    finally:
        supervisor.kill()
        supervisor.wait()
        for pid in pids:  # only if the test failed: the orphans, by pid and command line
            if command_line(pid) == [sys.executable, "-c", "import signal; signal.pause()"]:
                os.kill(pid, signal.SIGKILL)


def _stale_file(state_dir, pid, cmdline):
    data = {"pid": pid, "services": {"nissa": {"pid": pid, "cmdline": [sys.executable, "-m", "services.cli", "-v",
                                                                       "serve", "nissa"]}}}
    if cmdline is not None:
        data["cmdline"] = cmdline
    status_file(state_dir).write_text(json.dumps(data))


@pytest.mark.parametrize("recorded", [[sys.executable, "-m", "services.cli", "-v", "supervise"], None],
                         ids=["with-command-line", "older-file-without"])
def test_down_on_a_stale_pid_file_says_so_and_signals_nothing(tmp_path, recorded):
    unrelated = subprocess.Popen(["sleep", "60"])
    try:
        _stale_file(tmp_path, unrelated.pid, recorded)
        assert read_status(tmp_path) is None
        said = processes.stop(tmp_path, timeout_s=5)
        assert said.startswith("were not running: stale") and "nothing signalled" in said and "sleep 60" in said
        assert "\n" not in said
        assert unrelated.poll() is None, "the unrelated process was not signalled"
        assert not status_file(tmp_path).exists()
        assert processes.stop(tmp_path) == processes.NOT_RUNNING
    finally:
        unrelated.kill()
        unrelated.wait()


def test_esper_down_on_a_dead_pid_says_so_in_one_line(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    _stale_file(tmp_path, dead.pid, [sys.executable, "-m", "services.cli", "-v", "supervise"])
    down = run_esper("down", env=esper_env(ESPER_STATE_DIR=str(tmp_path), KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1"))
    assert down.returncode == 0, down.stderr
    services = [line for line in down.stdout.splitlines() if line.startswith("services:")]
    assert len(services) == 1 and f"pid {dead.pid} is not running" in services[0], down.stdout


def test_a_recycled_service_pid_reads_as_down(tmp_path):
    supervisor = Supervisor(tmp_path, names=("steady",), command=command, grace_s=5)
    unrelated = subprocess.Popen(["sleep", "60"])
    try:
        supervisor.step()
        supervisor.write_status()
        assert read_status(tmp_path)["services"]["steady"]["pid"] == supervisor.states["steady"].pid
        data = json.loads(status_file(tmp_path).read_text())
        data["services"]["steady"]["pid"] = unrelated.pid  # as if it died and the number went to `sleep`
        status_file(tmp_path).write_text(json.dumps(data))
        assert read_status(tmp_path)["services"]["steady"]["pid"] is None
    finally:
        supervisor.stop_all()
        unrelated.kill()
        unrelated.wait()


def test_a_service_runs_as_several_instances_each_restarted_on_its_own(tmp_path):
    started: list[tuple[str, int]] = []

    def recorded(name: str, instance: int) -> list[str]:
        started.append((name, instance))
        return COMMANDS[name]

    supervisor = Supervisor(tmp_path, names=("steady", "crashy"), command=recorded, grace_s=5,
                            instances={"steady": 3})
    try:
        supervisor.step()
        assert sorted(supervisor.states) == ["crashy", "steady-1", "steady-2", "steady-3"]
        assert sorted(started) == [("crashy", 1), ("steady", 1), ("steady", 2), ("steady", 3)]
        victim = supervisor.states["steady-2"].pid
        os.kill(victim, signal.SIGKILL)
        step_until(supervisor, lambda: supervisor.states["steady-2"].pid not in (None, victim))
        supervisor.write_status()
        steady = read_status(tmp_path)["services"]["steady"]
        assert sorted(steady["instances"]) == ["1", "2", "3"]
        assert [steady["instances"][i]["restarts"] for i in ("1", "2", "3")] == [0, 1, 0]
        assert steady["restarts"] == 1 and steady["pid"] == supervisor.states["steady-1"].pid
        assert all(steady["instances"][i]["pid"] for i in ("1", "2", "3"))
        assert (tmp_path / "logs" / "steady-3.log").exists()
    finally:
        supervisor.stop_all()
