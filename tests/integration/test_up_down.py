"""`esper up` starts the services beside the cluster, `esper status` reports them, `esper down` stops them."""

from __future__ import annotations

import os

from tests.esper_cli import esper_env, run_esper


def test_up_status_down(kafka_bootstrap, tmp_path):
    env = esper_env(KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, ESPER_STATE_DIR=str(tmp_path),
                    ESPER_KAFKA__TOPIC_PREFIX=f"updown.{os.getpid()}.")

    def esper(*args):
        return run_esper(*args, env=env)

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
