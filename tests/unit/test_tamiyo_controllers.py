"""Tamiyo's per-run controllers: exploration recorded on the decisions, random germination with the budget left,
the heuristic teacher; each a function of the run's events (the same decisions on every replay)."""

from __future__ import annotations

from contracts import CommandAction
from services.tamiyo.controllers import planned_epochs
from services.tamiyo.decider import Decider
from tests.tamiyo_events import FixedChooser, plateau_run
from tests.unit.test_tamiyo_decisions import ScriptedPolicy, decide_all, fold_all


def _run(epochs: int = 8, controller: str | None = None, exploration: float = 0.0, **session_args):
    events = plateau_run(epochs=epochs, **session_args)  # the session plans 8 epochs
    topic, first = events[0]
    events[0] = (topic, first.model_copy(update={"controller": controller, "exploration": exploration}))
    return fold_all(events)


def _germinations(actions) -> list:
    return [a for a in actions if a.command and a.command.action is CommandAction.GERMINATE]


def test_exploration_grows_at_random_and_says_so_on_the_decision():
    never = ScriptedPolicy(p=0.0)  # the policy itself would never grow
    greedy = decide_all(_run(exploration=0.0), Decider(never, "v", FixedChooser()))
    assert _germinations(greedy) == [] and not any(a.decision.explored for a in greedy)
    explored = decide_all(_run(exploration=1.0), Decider(never, "v", FixedChooser()))
    grown = _germinations(explored)
    # (the test's commands never take effect: after two epochs they count as lost and the budget is free again)
    assert len(grown) >= 2 and all(a.decision.explored and a.decision.reason.startswith("explore: ") for a in grown)
    assert all(a.decision.policy_version == "v" for a in explored)
    again = decide_all(_run(exploration=1.0), Decider(never, "v", FixedChooser()))
    same = [[a.decision.model_dump(exclude={"timestamp"}) for a in actions] for actions in (again, explored)]
    assert same[0] == same[1]  # a function of the log


def test_random_germination_spends_the_budget_left_on_drawn_epochs_whatever_the_policy_says():
    run = _run(epochs=8, controller="random", budget=2)
    plan = planned_epochs(run)
    assert len(plan) == 2 and all(0 <= e < 6 for e in plan)  # 75 % of 8 epochs
    actions = decide_all(run, Decider(ScriptedPolicy(p=0.0), "random", FixedChooser()))
    grown = _germinations(actions)
    # The drawn epochs, then (commands never taking effect here count as lost after two epochs) the lost ones again.
    assert [a.decision.epoch for a in grown][:2] == plan
    assert all(a.decision.policy_version == "random" and not a.decision.explored for a in actions)
    none = decide_all(_run(controller="random", budget=0), Decider(ScriptedPolicy(p=1.0), "random", FixedChooser()))
    assert _germinations(none) == []


def test_the_heuristic_controller_follows_the_teacher_not_the_policy():
    # plateau_run: accuracy flat and body.2's units dying: the teacher grows there, with a bottleneck seed.
    actions = decide_all(_run(epochs=4, controller="heuristic"),
                         Decider(ScriptedPolicy(p=0.0), "heuristic", FixedChooser()))
    grown = _germinations(actions)
    assert grown and grown[0].command.layer_name == "body.2" and grown[0].decision.family == "bottleneck"
