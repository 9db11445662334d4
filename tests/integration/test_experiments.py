"""``esper experiment`` end to end on the real broker: a tiny experiment (smallest task, 2 seeds, 4 epochs, all
four arms), every arm a normal run on the bus, then Nissa's ``experiments`` view and ``esper report --experiment``.

The adaptive arms are grown by germinate commands published before they start (their run ids are known:
``EXPERIMENT-adaptive-sSEED``), so the static arms are sized from a network that really grew or culled.
"""

from __future__ import annotations

import contextlib
import io
import uuid

import duckdb
import pytest

from contracts import CommandAction
from services.blueprints.modules import build_module, parameter_count
from services.blueprints.starter import mlp_adapter
from services.cli.main import main
from services.tolaria.config import parse_config
from services.tolaria.experiment import arm_run_id, run_experiment
from tests.integration.test_nissa_sink import ingest
from tests.kafka_helpers import publish_command, publish_kernel

TINY = {
    "name": "it-exp", "epochs": 4, "batch_size": 32,
    "data": {"dataset": "checkerboard", "checkerboard_cells": 2, "checkerboard_points": 60},
    "model": {"kind": "mlp", "hidden": [8]},
    "seeds": {"target_layers": ["body.0"], "per_layer": 2},
    "optimizer": {"lr": 0.01},
    "adaptation": {"training_epochs": 1, "grafting_steps": 4, "embargo_epochs": 1, "budget": 2, "kernel_wait_s": 5,
                   "min_contribution": -1.0},  # the gate lets every grafted seed fossilize: something grows
}
SEEDS = (0, 1)
ARMS = ("adaptive", "no_adapt", "static_final", "static_width")


@pytest.mark.timeout(600)
def test_a_tiny_experiment_end_to_end(esper_settings, tmp_path):
    kafka, prefix = esper_settings.kafka, esper_settings.kafka.topic_prefix
    blueprint = mlp_adapter(2, 8, 16)
    kernel_id = publish_kernel(kafka, blueprint, prefix=prefix)
    experiment_id = f"it-exp-{uuid.uuid4().hex[:6]}"
    for seed in SEEDS:
        publish_command(kafka, arm_run_id(experiment_id, "adaptive", seed), CommandAction.GERMINATE, "body.0", 0,
                        kernel_id=kernel_id, epoch=0, prefix=prefix)

    results = run_experiment(parse_config(TINY), esper_settings, SEEDS, list(ARMS), experiment_id, progress=False)
    assert [(r.seed, r.arm) for r in results] == [(s, a) for s in SEEDS for a in ARMS]
    kernel_parameters = parameter_count(build_module(blueprint.architecture))
    for seed in SEEDS:
        arm = {r.arm: r.run for r in results if r.seed == seed}
        host = arm["no_adapt"].parameter_count
        assert len(arm["adaptive"].fossils) == 1, arm["adaptive"].seed_states
        assert arm["adaptive"].parameter_count == host + kernel_parameters
        assert arm["static_final"].parameter_count == host + kernel_parameters * len(arm["adaptive"].fossils)
        assert arm["static_width"].parameter_count >= arm["adaptive"].parameter_count
        assert all(r.run_id == arm_run_id(experiment_id, r_arm, seed) for r_arm, r in arm.items())

    db = tmp_path / "nissa.duckdb"
    assert ingest(esper_settings, db) > 0
    with duckdb.connect(str(db), read_only=True) as con:
        runs = con.execute("SELECT arm, seed, status, validation_accuracy, parameters FROM experiment_runs "
                           "WHERE experiment_id = ? ORDER BY seed, arm", [experiment_id]).fetchall()
        rows = {r[0]: r[1:] for r in con.execute(
            "SELECT arm, n, val_mean, val_ci95, parameters, train_seconds, gain_per_1k_params FROM experiments "
            "WHERE experiment_id = ?", [experiment_id]).fetchall()}
    by_run = {(r.arm, r.seed): r.run for r in results}
    assert [(a, s) for a, s, *_ in runs] == sorted(((a, s) for a in ARMS for s in SEEDS), key=lambda k: (k[1], k[0]))
    for arm, seed, status, val, params in runs:
        assert status == "completed" and val == pytest.approx(by_run[arm, seed].validation_accuracy)
        assert params == by_run[arm, seed].parameter_count
    assert set(rows) == set(ARMS)
    for arm, (n, val_mean, val_ci, params, seconds, gain) in rows.items():
        vals = [by_run[arm, s].validation_accuracy for s in SEEDS]
        assert n == 2 and val_mean == pytest.approx(sum(vals) / 2) and val_ci is not None and seconds > 0
        assert (gain is None) == (arm == "no_adapt" or params == rows["no_adapt"][3])

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["report", "--experiment", experiment_id, "--db", str(db), "--out", str(tmp_path / "e.html")]) == 0
    printed = out.getvalue()
    assert all(f"| {arm}" in printed for arm in ARMS) and (tmp_path / "e.html").exists()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["report", "--experiment", "no-such-experiment", "--db", str(db)]) == 1
    assert err.getvalue().count("\n") == 1 and "is not in the Nissa database" in err.getvalue()
