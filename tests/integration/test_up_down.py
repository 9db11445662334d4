"""`esper up` starts the supervised services beside the cluster, `esper status` reports them, `esper down`
stops them cleanly."""

from __future__ import annotations

import os
import re
import time

from services.supervisor import SERVICES
from tests.esper_cli import esper_env, run_esper


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
