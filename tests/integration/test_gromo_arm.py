"""The gromo arm on the real broker: a tiny experiment (smallest task, one seed, 4 epochs) whose adaptive arm
grows a seed and whose gromo arm grows the same host with the gromo package up to the adaptive arm's parameter
count; both are normal runs, and Nissa's ``experiments`` view and ``esper report --experiment`` show the gromo
arm beside the others with nothing special about it."""

from __future__ import annotations

import contextlib
import io
import uuid

import duckdb
import pytest

from contracts import CommandAction
from services.blueprints.starter import mlp_adapter
from services.cli.main import main
from services.tolaria.config import parse_config
from services.tolaria.experiment import arm_run_id, run_experiment
from tests.integration.test_experiments import TINY
from tests.integration.test_nissa_sink import ingest
from tests.kafka_helpers import publish_command, publish_kernel

ARMS = ("adaptive", "no_adapt", "gromo")


@pytest.mark.timeout(300)
def test_the_gromo_arm_grows_to_the_adaptive_arms_budget_and_is_an_arm_like_the_others(esper_settings, tmp_path):
    kafka, prefix = esper_settings.kafka, esper_settings.kafka.topic_prefix
    kernel_id = publish_kernel(kafka, mlp_adapter(2, 8, 16), prefix=prefix)
    experiment_id = f"it-gromo-{uuid.uuid4().hex[:6]}"
    publish_command(kafka, arm_run_id(experiment_id, "adaptive", 0), CommandAction.GERMINATE, "body.0", 0,
                    kernel_id=kernel_id, epoch=0, prefix=prefix)

    results = run_experiment(parse_config(TINY), esper_settings, [0], list(ARMS), experiment_id, progress=False)
    run = {r.arm: r.run for r in results}
    host, grown = run["no_adapt"].parameter_count, run["adaptive"].parameter_count
    assert len(run["adaptive"].fossils) == 1 and grown > host
    # the same budget: gromo grew the host's hidden layer (a unit costs 2 + 1 + 2 parameters) to within a unit of it
    assert grown - 5 < run["gromo"].parameter_count <= grown
    assert run["gromo"].seed_states == {} and run["gromo"].epochs == TINY["epochs"]

    db = tmp_path / "nissa.duckdb"
    assert ingest(esper_settings, db) > 0
    with duckdb.connect(str(db), read_only=True) as con:
        runs = con.execute("SELECT run_id, status, validation_accuracy, test_accuracy, parameters, train_seconds "
                           "FROM experiment_runs WHERE experiment_id = ? AND arm = 'gromo'", [experiment_id]).fetchall()
        arms = {r[0]: r[1:] for r in con.execute(
            "SELECT arm, n, val_mean, parameters, gain_per_1k_params FROM experiments WHERE experiment_id = ?",
            [experiment_id]).fetchall()}
        epochs = con.execute("SELECT state_epoch, parameter_count FROM epoch_completed WHERE run_id = ? "
                             "ORDER BY state_epoch", [arm_run_id(experiment_id, "gromo", 0)]).fetchall()
    assert [r[:2] for r in runs] == [(arm_run_id(experiment_id, "gromo", 0), "completed")]
    assert runs[0][2] == pytest.approx(run["gromo"].validation_accuracy)
    assert runs[0][3] == pytest.approx(run["gromo"].test_accuracy)
    assert runs[0][4] == run["gromo"].parameter_count and runs[0][5] > 0
    assert set(arms) == set(ARMS) and arms["gromo"][0] == 1 and arms["gromo"][2] == run["gromo"].parameter_count
    assert arms["gromo"][3] is not None  # gain per 1k parameters over no_adapt, as for any grown arm
    # per-epoch metrics like every run's; the parameters grow at the plan's epochs (1 and 2 of 4) and then stay
    counts = [c for _, c in epochs]
    assert [e for e, _ in epochs] == list(range(TINY["epochs"])) and counts[0] == host
    assert counts[-1] == run["gromo"].parameter_count and counts == sorted(counts) and counts[1] > host

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["report", "--experiment", experiment_id, "--db", str(db), "--out", str(tmp_path / "g.html")]) == 0
    assert all(f"| {arm}" in out.getvalue() for arm in ARMS)
