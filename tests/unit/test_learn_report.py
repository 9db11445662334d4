"""The learning loop's plan and report arithmetic (pure): disjoint task splits, paired differences per task."""

from __future__ import annotations

import pytest

from services.cli.learn_report import markdown, report_data
from services.cli.learning_loop import ARMS, ArmRun, LoopPlan, LoopResult
from services.core.errors import UsageError
from services.tolaria.config import parse_config

CFG = parse_config({"name": "t", "epochs": 6, "adaptation": {"auto_advance": False}})


def test_a_plan_keeps_training_and_held_out_tasks_apart_and_tamiyo_in_charge():
    with pytest.raises(UsageError, match="overlap"):
        LoopPlan("l", CFG, (1, 2), (2, 3))
    with pytest.raises(UsageError, match="auto_advance"):
        LoopPlan("l", parse_config({"name": "t"}), (1,), (2,))
    with pytest.raises(UsageError, match="fork-epoch"):
        LoopPlan("l", CFG, (1,), (2,), fork_epoch=5)
    plan = LoopPlan("l", CFG, (1,), (2,))
    assert plan.task(2).seed == 2 and plan.task(2).checkpoint_keep_epochs == 6  # every epoch: a fork parent
    assert (plan.collect_id(1), plan.real_id("new", 2), plan.fork_id("random", 2)) == ("l-c-s1", "l-r-new-s2",
                                                                                      "l-f-random-s2")


def test_paired_differences_are_per_task_with_a_t_interval():
    vals = {"promoted": [0.5, 0.6, 0.7], "new": [0.6, 0.6, 0.9], "heuristic": [0.5] * 3, "random": [0.4] * 3,
            "no_adapt": [0.3] * 3}
    runs = [ArmRun(arm, seed, kind, f"{kind}-{arm}-{seed}", vals[arm][seed], 0.0, 10, 1)
            for kind in ("real", "fork") for arm in ARMS for seed in range(3)]
    data = report_data(LoopResult(LoopPlan("l", CFG, (9,), (0, 1, 2)), "gnn-a", "gnn-b", runs=runs))
    paired = data["fork"]["paired"]["new-promoted"]
    assert paired["differences"] == pytest.approx([0.1, 0.0, 0.2]) and paired["mean"] == pytest.approx(0.1)
    # t(0.975, 2) = 4.3027 times the standard error 0.1 / sqrt(3)
    assert paired["ci95"] == pytest.approx(4.3027 * 0.1 / 3 ** 0.5, rel=1e-4)
    assert data["real"]["arms"]["no_adapt"]["mean"] == pytest.approx(0.3)
    assert "| new-random | +0.3000 ± " in markdown(data)
