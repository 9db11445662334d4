"""Forks on the real broker: a recorded run is forked at epoch K under its own controller (it retraces the parent's
next epochs exactly), under ``--no-adapt`` and under another policy; Nissa shows the tree and ``esper report
--compare`` aligns parent and fork from the fork point. A fork made after the broker restarted works the same.

The parent is grown by a germinate command published before it starts (its run id is known), so at the fork
point a seed is half-way through its lifecycle: what the fork must carry besides the weights.

Why exact equality: parent and fork run in this one process on the CPU, with the same torch build and threads;
the fork starts from the parent's own tensors (weights, Adam moments and step counts, every seed's kernel, alpha
and lifecycle counters) and each epoch sets torch's RNG and the data order from (seed, epoch) alone. Nothing
else enters an epoch, so every float of the epochs after K must be bit-identical; any tolerance would hide a
missing piece of state.
"""

from __future__ import annotations

import contextlib
import io
import os
import uuid

import duckdb
import pytest

from contracts import CommandAction
from services.blueprints.starter import mlp_adapter
from services.cli.main import main
from services.cli.settings import EsperSettings
from services.oona.admin import ensure_topics
from services.oona.local_broker import LocalKafka
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import all_topics
from services.tolaria.checkpoint import kept_epochs
from services.tolaria.config import parse_config
from services.tolaria.fork import ForkRequest
from services.tolaria.run import fork_run, start_run
from tests.integration.conftest import local_broker_config
from tests.integration.run_log import run_events
from tests.integration.test_nissa_sink import ingest
from tests.kafka_helpers import publish_command, publish_kernel

EPOCHS, AT = 7, 2
CONFIG = {
    "name": "it-fork", "epochs": EPOCHS, "batch_size": 32, "device": "cpu",
    "data": {"dataset": "checkerboard", "checkerboard_cells": 2, "checkerboard_points": 100},
    "model": {"kind": "mlp", "hidden": [8]},
    "seeds": {"target_layers": ["body.0"], "per_layer": 2},
    "optimizer": {"lr": 0.01}, "checkpoint_keep_epochs": 5,
    "adaptation": {"training_epochs": 1, "grafting_steps": 12, "embargo_epochs": 1, "budget": 2, "kernel_wait_s": 5,
                   "min_contribution": -1.0},  # the gate lets the grafted seed fossilize: its life spans the fork
}
RESTART_PORT = int(os.environ.get("ESPER_TEST_RESTART_BROKER_PORT", "19192"))


def _epochs(kafka: KafkaSettings, run_id: str) -> dict[int, tuple]:
    """Every number of every EpochCompleted of the run but its timings, by epoch."""
    out = {}
    for topic, m in run_events(kafka, run_id):
        if topic.endswith("system.events.epoch"):
            p = m.payload
            out[p.state.epoch] = (p.state.training_loss, p.state.validation_loss, p.train_accuracy,
                                  p.validation_accuracy, p.parameter_count, p.seed_parameter_count, p.learning_rate,
                                  p.state.active_seeds)
    return out


def _transitions(kafka: KafkaSettings, run_id: str) -> list[tuple]:
    return [(m.payload.epoch, m.payload.seed_idx, m.payload.from_state.value, m.payload.to_state.value)
            for topic, m in run_events(kafka, run_id) if topic.endswith("lifecycle.seed.transitions")]


def _sessions(kafka: KafkaSettings, run_id: str) -> list:
    return [m.payload for topic, m in run_events(kafka, run_id) if topic.endswith("training.sessions")]


def _grown_parent(settings: EsperSettings, run_id: str):
    kafka = settings.kafka
    kernel_id = publish_kernel(kafka, mlp_adapter(2, 8, 16), prefix=kafka.topic_prefix)
    publish_command(kafka, run_id, CommandAction.GERMINATE, "body.0", 0, kernel_id=kernel_id, epoch=1,
                    prefix=kafka.topic_prefix)
    return start_run(parse_config(CONFIG), settings, run_id=run_id, progress=False)


def _assert_retraces(kafka: KafkaSettings, parent: str, fork: str) -> None:
    ours, theirs = _epochs(kafka, parent), _epochs(kafka, fork)
    assert sorted(theirs) == list(range(AT + 1, EPOCHS)), "a fork's epochs carry on the parent's numbering"
    assert {e: ours[e] for e in theirs} == theirs
    lifecycle = _transitions(kafka, parent)
    later = [t for t in lifecycle if t[0] > AT]
    assert later and _transitions(kafka, fork) == later, f"the seed's lifecycle goes on as in the parent: {lifecycle}"


@pytest.mark.timeout(600)
def test_forks_of_a_recorded_run_retrace_it_or_go_their_own_way(esper_settings, tmp_path):
    kafka = esper_settings.kafka
    parent_id = f"fork-parent-{uuid.uuid4().hex[:6]}"
    parent = _grown_parent(esper_settings, parent_id)
    assert parent.seed_states.get("fossilized") == 1, parent.seed_states
    assert kept_epochs(esper_settings.state_dir, parent_id) == list(range(EPOCHS - 5, EPOCHS))

    same = fork_run(ForkRequest(parent_id, AT), esper_settings, run_id=f"{parent_id}-same", progress=False)
    _assert_retraces(kafka, parent_id, same.run_id)
    assert (same.validation_accuracy, same.test_accuracy) == (parent.validation_accuracy, parent.test_accuracy)

    quiet = fork_run(ForkRequest(parent_id, AT, no_adapt=True, epochs=EPOCHS + 1), esper_settings,
                     run_id=f"{parent_id}-quiet", progress=False)
    assert sorted(_epochs(kafka, quiet.run_id)) == list(range(AT + 1, EPOCHS + 1))
    other = fork_run(ForkRequest(parent_id, AT, policy_version="gnn-00000000000a"), esper_settings,
                     run_id=f"{parent_id}-other", progress=False)
    grandchild = fork_run(ForkRequest(other.run_id, AT + 2, no_adapt=True), esper_settings,
                          run_id=f"{parent_id}-deep", progress=False)

    started = _sessions(kafka, same.run_id)[0]
    parent_end = {f"{t}:{p}": o for t, parts in _checkpointed_positions(esper_settings, parent_id).items()
                  for p, o in parts.items()}
    assert (started.parent_run_id, started.fork_epoch, started.session.status.value) == (parent_id, AT, "running")
    assert started.parent_log_position == parent_end and started.parent_log_position
    assert not _sessions(kafka, quiet.run_id)[-1].session.training_config.adaptation_enabled
    assert {s.policy_version for s in _sessions(kafka, other.run_id)} == {"gnn-00000000000a"}

    db = tmp_path / "nissa.duckdb"
    assert ingest(esper_settings, db) > 0
    with duckdb.connect(str(db), read_only=True) as con:
        lineage = con.execute("SELECT run_id, parent_run_id, fork_epoch, root_run_id, depth, controller, status "
                              "FROM run_lineage WHERE root_run_id = ? ORDER BY lineage", [parent_id]).fetchall()
        runs = con.execute("SELECT run_id, parent_run_id, fork_epoch, epochs FROM runs WHERE run_id LIKE ? "
                           "ORDER BY run_id", [f"{parent_id}%"]).fetchall()
    assert lineage == [
        (parent_id, None, None, parent_id, 0, "default", "completed"),
        (other.run_id, parent_id, AT, parent_id, 1, "policy gnn-00000000000a", "completed"),
        (grandchild.run_id, other.run_id, AT + 2, parent_id, 2, "no_adapt", "completed"),
        (quiet.run_id, parent_id, AT, parent_id, 1, "no_adapt", "completed"),
        (same.run_id, parent_id, AT, parent_id, 1, "default", "completed"),
    ]
    assert runs == [(parent_id, None, None, EPOCHS), (grandchild.run_id, other.run_id, AT + 2, EPOCHS - AT - 3),
                    (other.run_id, parent_id, AT, EPOCHS - AT - 1), (quiet.run_id, parent_id, AT, EPOCHS - AT),
                    (same.run_id, parent_id, AT, EPOCHS - AT - 1)]

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["report", parent_id, "--compare", same.run_id, "--db", str(db),
                     "--out", str(tmp_path / "r.html")]) == 0
    printed = out.getvalue()
    assert f"{same.run_id} forked from {parent_id} at epoch {AT}" in printed
    assert printed.count("fork - parent +0.0000") == EPOCHS - AT - 1, printed
    assert f'data-fork-epoch="{AT}"' in (tmp_path / "r.html").read_text()


def _checkpointed_positions(settings: EsperSettings, run_id: str) -> dict:
    from services.tolaria.checkpoint import epoch_checkpoint_path, load_checkpoint

    return load_checkpoint(epoch_checkpoint_path(settings.state_dir, run_id, AT)).meta.log_positions


@pytest.mark.timeout(600)
def test_a_fork_after_a_broker_restart_retraces_its_parent(tmp_path):
    broker = LocalKafka(local_broker_config(RESTART_PORT, "fork-restart-broker"))
    prefix = f"forkrestart.{uuid.uuid4().hex[:8]}."
    settings = EsperSettings(kafka=KafkaSettings(bootstrap_servers=broker.cfg.bootstrap_servers, topic_prefix=prefix,
                                                 connect_timeout_s=30),
                             state_dir=tmp_path / "state", external_cluster=True)
    try:
        broker.start()
        ensure_topics(settings.kafka, all_topics(prefix))
        parent_id = f"restart-parent-{uuid.uuid4().hex[:6]}"
        _grown_parent(settings, parent_id)
        assert broker.stop()
        broker.start()
        fork = fork_run(ForkRequest(parent_id, AT), settings, run_id=f"{parent_id}-fork", progress=False)
        _assert_retraces(settings.kafka, parent_id, fork.run_id)
    finally:
        broker.stop()
