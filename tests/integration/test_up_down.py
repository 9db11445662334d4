"""`esper up` starts the services beside the cluster, `esper status` reports them, `esper down` stops them."""

from __future__ import annotations

import os
import subprocess
import sys

from services.oona.local_broker import REPO_ROOT


def test_up_status_down(kafka_bootstrap, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESPER_")}
    env.update(PYTHONPATH=str(REPO_ROOT), KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, ESPER_STATE_DIR=str(tmp_path),
               ESPER_KAFKA__TOPIC_PREFIX=f"updown.{os.getpid()}.")

    def esper(*args):
        return subprocess.run([sys.executable, "-m", "services.cli", *args], env=env, capture_output=True, text=True,
                              timeout=120)

    try:
        up = esper("up")
        assert up.returncode == 0, up.stderr
        assert "external cluster" in up.stdout
        for name in ("tezzeret", "urabrask", "karn"):
            assert f"{name}: started" in up.stdout
        again = esper("up")
        assert again.stdout.count("already running") == 3, "idempotent"
        status = esper("status")
        assert status.returncode == 0 and status.stdout.count(": up pid=") == 3, status.stdout
    finally:
        down = esper("down")
    assert down.returncode == 0 and down.stdout.count(": stopped") == 3, down.stdout + down.stderr
    after = esper("status")
    assert after.returncode == 3 and after.stdout.count(": down") == 3
    for name in ("tezzeret", "urabrask", "karn"):
        log = (tmp_path / "logs" / f"{name}.log").read_text()
        assert f"service stopped name={name}" in log, "SIGTERM shuts the service down cleanly"
