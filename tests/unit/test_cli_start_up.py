"""Commands that neither train nor decide start without torch (each run in a fresh interpreter).

``esper sql``, ``runs``, ``status``, ``replay`` without ``--policy`` and ``--help`` are here (no broker needed);
``topics``, ``kernels list``, ``tail`` and ``replay`` from Kafka are checked on the real broker in
tests/integration/test_cli_start_up.py. ``esper policy show`` loads a policy network: the control that the
check can see torch at all.
"""

from __future__ import annotations

import pytest

from tests.esper_cli import esper_env, run_esper_watching_torch
from tests.unit.test_nissa_queries import db  # noqa: F401  (the fixture: a Nissa database with one run)

CLOSED = "127.0.0.1:9"  # nothing listens there


@pytest.fixture
def env(tmp_path):
    return esper_env(KAFKA_BOOTSTRAP_SERVERS=CLOSED, ESPER_STATE_DIR=str(tmp_path / "state"),
                     ESPER_KAFKA__CONNECT_TIMEOUT_S="1")


def test_help_and_sql_and_runs_do_not_import_torch(env, db):  # noqa: F811
    for args, expected in ((["--help"], "usage: esper"),
                           (["sql", "--db", str(db), "--format", "csv", "SELECT 42 AS answer"], "answer\n42\n"),
                           (["runs", "--db", str(db), "--format", "csv"], "run-sample")):
        done, torch = run_esper_watching_torch(*args, env=env)
        assert done.returncode == 0 and expected in done.stdout, (args, done.stderr)
        assert not torch, f"esper {' '.join(args)} imported torch"


def test_status_and_an_archive_replay_do_not_import_torch(env, tmp_path):
    done, torch = run_esper_watching_torch("status", env=env)
    assert done.returncode == 3 and "broker" in done.stdout, done.stderr  # 3: not up
    assert not torch
    archive = tmp_path / "archive"
    archive.mkdir()
    done, torch = run_esper_watching_torch("replay", "run-1", "--archive", str(archive), env=env)
    assert done.returncode == 1 and done.stderr.startswith("esper: error: "), done.stderr
    assert not torch


def test_the_check_sees_torch_when_a_command_loads_a_policy(env):
    done, torch = run_esper_watching_torch("policy", "show", env=env)
    assert done.returncode == 0, done.stderr
    assert torch
