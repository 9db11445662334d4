"""On the real broker: ``esper topics``, ``kernels list``, ``tail`` and ``replay`` without ``--policy`` work
and never import torch (each in a fresh interpreter; see tests/unit/test_cli_start_up.py for the rest)."""

from __future__ import annotations

import json

import duckdb

from services.oona.codec import SingleObjectCodec
from services.oona.producer import OonaProducer
from services.oona.topic_registry import topic_spec
from tests.esper_cli import esper_env, run_esper_watching_torch
from tests.samples import message_for


def test_bus_commands_and_a_kafka_replay_do_not_import_torch(esper_settings, tmp_path):
    kafka = esper_settings.kafka
    spec = topic_spec("telemetry.seed.health", kafka.topic_prefix)
    sample = message_for(spec, run_id="run-start-up")
    producer = OonaProducer(kafka, SingleObjectCodec())
    producer.publish(spec, sample)
    producer.flush()
    env = esper_env(KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap_servers, ESPER_KAFKA__TOPIC_PREFIX=kafka.topic_prefix,
                    ESPER_STATE_DIR=str(tmp_path / "state"))
    out = tmp_path / "replay.duckdb"
    stdout = {}
    for args in (["topics", "create"], ["topics", "list"], ["kernels", "list"],
                 ["tail", "telemetry.seed.health", "--from-beginning", "--max", "1", "--timeout", "30"],
                 ["replay", "run-start-up", "--out", str(out), "--no-progress"]):
        done, torch = run_esper_watching_torch(*args, env=env)
        assert done.returncode == 0, (args, done.stdout, done.stderr)
        assert not torch, f"esper {' '.join(args)} imported torch"
        stdout[" ".join(args[:2])] = done.stdout
    assert "already present" in stdout["topics create"] and "telemetry.seed.health" in stdout["topics list"]
    tailed = json.loads(
        next(line for line in stdout["tail telemetry.seed.health"].splitlines() if line.startswith("{"))
    )
    assert tailed["payload"]["layer_id"] == sample.payload.layer_id
    with duckdb.connect(str(out), read_only=True) as con:
        assert con.execute("SELECT run_id, layer_id FROM health_signal").fetchall() == [
            ("run-start-up", sample.payload.layer_id)]
