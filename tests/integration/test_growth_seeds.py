"""Width and depth seeds on the real broker: germinated by command, merged into the host, in Nissa's history,
and a checkpoint of the widened run restores the same model."""

from __future__ import annotations

import signal
import subprocess
import uuid
from collections import Counter

import duckdb
import torch
import yaml

from contracts import CommandAction, SeedState, layer_id_for_path
from services.blueprints.starter import depth_block, width_units
from services.nissa.sink import NissaSink
from services.oona.admin import delete_topics, ensure_topics
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import all_topics
from services.tolaria.checkpoint import checkpoint_path, load_checkpoint
from services.tolaria.config import parse_config
from services.tolaria.run import start_run
from services.tolaria.training_setup import build_training, restore
from tests.esper_cli import ESPER, esper_env
from tests.integration.run_log import run_events
from tests.integration.test_tolaria_resume import _wait_for_epoch as wait_for_epoch
from tests.kafka_helpers import publish_command, publish_kernel

UNITS = 6
CONFIG = {
    "name": "it-growth", "epochs": 8, "batch_size": 32, "device": "cpu",
    "data": {"dataset": "spirals", "spiral_points": 300},
    "model": {"kind": "mlp", "hidden": [8, 8]},
    "seeds": {"target_layers": ["body.0", "head"], "per_layer": 1},
    "optimizer": {"lr": 0.01},
    # min_contribution -1: the gate passes every seed, so the test knows the end state.
    "adaptation": {"training_epochs": 1, "grafting_steps": 10, "embargo_epochs": 1, "budget": 2,
                   "min_contribution": -1.0, "kernel_wait_s": 10},
}


def test_width_and_depth_seeds_grow_the_host_and_show_in_the_adaptation_history(esper_settings, tmp_path):
    kafka, prefix = esper_settings.kafka, esper_settings.kafka.topic_prefix
    run_id = f"it-grow-{uuid.uuid4().hex[:8]}"
    width_id = publish_kernel(kafka, width_units([2], [8], UNITS), prefix=prefix)
    depth_id = publish_kernel(kafka, depth_block([3], 8), prefix=prefix)
    publish_command(kafka, run_id, CommandAction.GERMINATE, "body.0", 0, kernel_id=width_id, epoch=1, prefix=prefix,
                    command_id="grow-width")
    publish_command(kafka, run_id, CommandAction.GERMINATE, "head", 0, kernel_id=depth_id, epoch=1, prefix=prefix,
                    command_id="grow-depth")
    cfg = parse_config(CONFIG)
    result = start_run(cfg, esper_settings, run_id=run_id, progress=False)
    assert result.epochs == 8

    events = run_events(kafka, run_id)
    transitions = [m.payload for t, m in events if t == prefix + "lifecycle.seed.transitions"]
    for layer in ("body.0", "head"):
        path = [(t.from_state, t.to_state) for t in transitions if t.layer_id == layer_id_for_path(layer)]
        assert path == [(SeedState.DORMANT, SeedState.GERMINATED), (SeedState.GERMINATED, SeedState.TRAINING),
                        (SeedState.TRAINING, SeedState.GRAFTING), (SeedState.GRAFTING, SeedState.FOSSILIZED)], layer
    epochs = [m.payload for t, m in events if t == prefix + "system.events.epoch"]
    host = epochs[0].parameter_count
    # the width seed's units: fan-in rows of body.0 (2 weights + a bias each), fan-out columns of body.2 (8 each);
    # the depth block: 3 -> 8 -> 3 with biases, kept as a (frozen) kernel
    grown = UNITS * (2 + 1) + 8 * UNITS
    assert epochs[-1].parameter_count == host + grown + (3 * 8 + 8 + 8 * 3 + 3)
    assert epochs[-1].seed_parameter_count == 3 * 8 + 8 + 8 * 3 + 3  # the width seed's are the host's now

    db = tmp_path / "nissa.duckdb"
    sink = NissaSink(kafka, db)
    sink.start()
    try:
        sink.run_until_caught_up(60)
    finally:
        sink.close()
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute("SELECT command_id, kernel_id, to_state, field_outcome FROM adaptation_history "
                       "WHERE run_id = ? ORDER BY command_id, transition_epoch, to_state", [run_id]).fetchall()
    for command_id, kernel_id in (("grow-depth", depth_id), ("grow-width", width_id)):
        mine = [r for r in rows if r[0] == command_id]
        assert {r[1] for r in mine} == {kernel_id}
        assert {r[2] for r in mine} == {"germinated", "training"}  # the transitions the command caused
        assert {r[3] for r in mine} == {"fossilized"}  # and the field report of the seed's end
    con.close()

    # The checkpoint holds the widened host: a fresh build plus restore gives the same model.
    checkpoint = load_checkpoint(checkpoint_path(esper_settings.state_dir, run_id))
    setup = build_training(cfg, adapt=True)
    restore(setup, checkpoint)
    assert setup.model.get_submodule("body.0.host").weight.shape == (8 + UNITS, 2)
    assert setup.model.get_submodule("body.2").weight.shape == (8, 8 + UNITS)
    assert sum(p.numel() for p in setup.model.parameters()) == epochs[-1].parameter_count
    for name, tensor in setup.model.state_dict().items():
        assert torch.equal(tensor, checkpoint.model[name]), name
    assert setup.trainer.evaluate("val")[1] == epochs[-1].validation_accuracy


RESUME = {
    "name": "it-growth-resume", "epochs": 24, "batch_size": 16, "device": "cpu",
    "data": {"dataset": "spirals", "spiral_points": 600},
    "model": {"kind": "mlp", "hidden": [8, 8]},
    "seeds": {"target_layers": ["body.0", "body.2"], "per_layer": 1},
    "optimizer": {"lr": 0.01},
    # 68 steps an epoch: each seed grafts for three epochs, so the second is grafting when the run is killed.
    "adaptation": {"training_epochs": 2, "grafting_steps": 200, "embargo_epochs": 1, "budget": 2,
                   "min_contribution": -1.0, "kernel_wait_s": 10},
}


def test_kill_9_with_a_merged_and_a_live_width_seed_then_resume(kafka_bootstrap, tmp_path):
    """The checkpoint holds a host widened once and a width seed still grafting: the resumed run goes on."""
    prefix = f"grow.{uuid.uuid4().hex[:8]}."
    kafka = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=prefix)
    ensure_topics(kafka, all_topics(prefix))
    run_id = f"grow-{uuid.uuid4().hex[:6]}"
    first = publish_kernel(kafka, width_units([2], [8], UNITS), prefix=prefix)
    second = publish_kernel(kafka, width_units([8 + UNITS], [8], 4), prefix=prefix)  # made for the widened body.2
    publish_command(kafka, run_id, CommandAction.GERMINATE, "body.0", 0, kernel_id=first, epoch=0, prefix=prefix,
                    command_id="widen-body0")
    publish_command(kafka, run_id, CommandAction.GERMINATE, "body.2", 0, kernel_id=second, epoch=8, prefix=prefix,
                    command_id="widen-body2")
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(RESUME))
    env = esper_env(KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, ESPER_KAFKA__TOPIC_PREFIX=prefix,
                    ESPER_STATE_DIR=str(tmp_path / "state"))
    cli = [*ESPER, "run"]
    try:
        with subprocess.Popen([*cli, str(config), "--run-id", run_id, "-q"], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) as proc:
            wait_for_epoch(kafka, prefix, run_id, 10, proc)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        resumed = subprocess.run([*cli, "--resume", run_id, "-q"], env=env, capture_output=True, text=True,
                                 timeout=300)
        assert resumed.returncode == 0, resumed.stderr
        events = run_events(kafka, run_id)
        ids = Counter(m.event_id for _, m in events)
        assert [i for i, n in ids.items() if n > 1] == [], "no event is on the log twice"
        epochs = sorted((m.payload for t, m in events if t.endswith("system.events.epoch")),
                        key=lambda e: e.state.epoch)
        assert [e.state.epoch for e in epochs] == list(range(RESUME["epochs"]))
        ends = {(m.payload.layer_id, m.payload.to_state) for t, m in events if t.endswith("lifecycle.seed.transitions")}
        assert {(layer_id_for_path(p), SeedState.FOSSILIZED) for p in ("body.0", "body.2")} <= ends
        [merged_late] = [m.payload.epoch for t, m in events if t.endswith("lifecycle.seed.transitions")
                         and m.payload.layer_id == layer_id_for_path("body.2")
                         and m.payload.to_state is SeedState.FOSSILIZED]
        assert merged_late > 10, "the second seed was still grafting at the kill (epoch >= 10)"
        host = (2 * 8 + 8) + (8 * 8 + 8) + (8 * 3 + 3)  # epoch 0 already counts the first seed's
        grown = UNITS * (2 + 1) + 8 * UNITS + 4 * (8 + UNITS + 1) + 3 * 4
        assert epochs[-1].parameter_count == host + grown and epochs[-1].seed_parameter_count == 0
    finally:
        delete_topics(kafka, [spec.name for spec in all_topics(prefix)])
