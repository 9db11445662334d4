"""``esper learn``'s loop end to end on a real broker with Tamiyo serving: a tiny task family, one held-out task.

It asserts the loop's structure and honesty, not that the new policy wins (that is the science run's job, README
"The learning loop"): a new version was trained from the collected runs (exploration recorded on their decisions)
and published; every arm has a real run and a fork; the forks share their parent and fork epoch; the random arm
germinated at most as often as the new policy (its budget); and the report's numbers are what Nissa's SQL gives.
"""

from __future__ import annotations

import json
import uuid

import duckdb
import pytest

from services.cli.learn_report import write_report
from services.cli.learning_loop import ARMS, Loop, LoopPlan, policy_registry
from services.oona.codec import SingleObjectCodec
from services.tolaria.config import parse_config
from tests.integration.test_nissa_sink import ingest
from tests.integration.test_tamiyo import publish_slot_kernels, tamiyo_running

TINY = {
    "name": "it-learn", "epochs": 7, "batch_size": 32,
    "data": {"dataset": "spirals", "spiral_points": 60},
    "model": {"kind": "mlp", "hidden": [8]},
    "seeds": {"target_layers": ["body.0"], "per_layer": 2},
    "optimizer": {"lr": 0.01},
    "adaptation": {"budget": 2, "training_epochs": 1, "grafting_steps": 4, "embargo_epochs": 1,
                   "auto_advance": False, "controller_wait_s": 20, "kernel_wait_s": 10},
}


@pytest.mark.timeout(900)
def test_the_learning_loop_trains_publishes_and_reports_what_nissa_says(esper_settings, tmp_path):
    kafka = esper_settings.kafka
    publish_slot_kernels(kafka, [2], [8])
    plan = LoopPlan(f"it-learn-{uuid.uuid4().hex[:6]}", parse_config(TINY), train_seeds=(10, 11),
                    heldout_seeds=(0,), exploration=1.0, fork_epoch=1, train_epochs=2)
    # exploration 1: every germination of the collected runs is explored (at 0.5 the run-id-seeded draws left
    # none in about one loop in sixteen, when the policy spent the budget in the first epochs)
    codec = SingleObjectCodec()
    with tamiyo_running(kafka, instance="learn", scatter="native"):
        result = Loop(plan, esper_settings, codec).run()
    md, js = write_report(result, tmp_path / "reports")
    report = json.loads(js.read_text())
    assert md.read_text().startswith(f"# Learning loop {plan.loop_id}")

    # A new version, trained from the collected runs, is on library.policies (published, not promoted).
    registry = policy_registry(kafka, codec)
    assert result.new_version in registry.versions and result.new_version != result.promoted
    assert registry.promoted == result.promoted
    assert registry.versions[result.new_version].trained_on == "runs " + ",".join(r.run_id for r in result.collected)
    assert report["train_metrics"]["samples"] >= 1 and report["explored_decisions"] >= 1

    # Every arm: one real run and one fork per held-out task; the forks share their parent and fork epoch.
    assert sorted((r.arm, r.kind) for r in result.runs) == sorted((a, k) for a in ARMS for k in ("real", "fork"))
    forks = [r for r in result.runs if r.kind == "fork"]
    assert {(r.parent_run_id, r.fork_epoch) for r in forks} == {(plan.real_id("no_adapt", 0), 1)}
    for kind in ("real", "fork"):
        arm = {r.arm: r for r in result.runs if r.kind == kind}
        # The same budget, spent at random: a planned epoch that falls where no germination can go (the
        # cooldown after the last one, the run's end) may leave part of it unspent, never more spent.
        assert arm["random"].germinations <= arm["new"].germinations
        assert arm["no_adapt"].germinations == 0
        assert all(report[kind]["arms"][a]["n"] == 1 for a in ARMS)

    # The report's numbers are Nissa's.
    db = tmp_path / "nissa.duckdb"
    assert ingest(esper_settings, db) > 0
    with duckdb.connect(str(db), read_only=True) as con:
        rows = {r[0]: r[1:] for r in con.execute(
            "SELECT run_id, parent_run_id, fork_epoch, final_validation_accuracy FROM runs WHERE run_id LIKE ?",
            [f"{plan.loop_id}-%"]).fetchall()}
        grown = dict(con.execute(
            "SELECT run_id, count(*) FILTER (WHERE action = 'germinate') FROM adaptation_decision "
            "WHERE run_id LIKE ? GROUP BY run_id", [f"{plan.loop_id}-%"]).fetchall())
        explored = con.execute("SELECT count(*) FROM adaptation_decision WHERE run_id LIKE ? AND explored",
                               [f"{plan.loop_id}-c-%"]).fetchone()
    assert explored is not None and explored[0] == report["explored_decisions"]
    assert set(rows) == {r["run_id"] for r in report["collected"] + report["runs"]}
    for r in report["collected"] + report["runs"]:
        parent, fork_epoch, val = rows[r["run_id"]]
        assert (parent, fork_epoch) == (r["parent_run_id"], r["fork_epoch"])
        assert val == pytest.approx(r["validation_accuracy"])
        assert grown.get(r["run_id"], 0) == r["germinations"]
    for kind in ("real", "fork"):
        for arm in ARMS:
            run_id = plan.real_id(arm, 0) if kind == "real" else plan.fork_id(arm, 0)
            assert report[kind]["arms"][arm]["mean"] == pytest.approx(rows[run_id][2])
        new_minus_promoted = report[kind]["paired"]["new-promoted"]["differences"]
        ids = (plan.real_id, plan.fork_id)[kind == "fork"]
        assert new_minus_promoted == [pytest.approx(rows[ids("new", 0)][2] - rows[ids("promoted", 0)][2])]
