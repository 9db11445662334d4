"""The supervisor restarts services that die, backing off while they keep dying young."""

from __future__ import annotations

import sys
import time

from services.supervisor import Supervisor, read_status

COMMANDS = {
    "crashy": [sys.executable, "-c", "import sys; sys.exit(3)"],
    "steady": [sys.executable, "-c", "import signal; signal.pause()"],  # runs until signalled
}


def step_until(supervisor: Supervisor, condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        supervisor.step()


def test_a_dying_service_is_restarted_with_growing_back_off_and_the_others_keep_running(tmp_path):
    supervisor = Supervisor(tmp_path, names=("crashy", "steady"), command=COMMANDS.__getitem__, grace_s=5)
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
