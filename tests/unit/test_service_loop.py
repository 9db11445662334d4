"""A service whose step hangs ends its own process, so that the supervisor restarts it."""

from __future__ import annotations

import subprocess
import sys

from tests.esper_cli import REPO

HANGING = """
import threading
from services.oona.service_loop import StopFlag, run_until_stopped
run_until_stopped("hangs", lambda: threading.Event().wait(), StopFlag(), lambda: None, stall_timeout_s=1.0)
"""


def test_a_hanging_step_ends_the_process_with_a_log_line():
    result = subprocess.run([sys.executable, "-c", "import logging; logging.basicConfig(); " + HANGING.strip()],
                            cwd=REPO, capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(REPO)})
    assert result.returncode == 70
    assert "exiting to be restarted" in result.stderr
