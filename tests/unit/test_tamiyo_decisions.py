"""Tamiyo's pure core: run state from events, completeness, features, lifecycle rules, germination choices."""

from __future__ import annotations

import random

import pytest
import torch

from contracts import AdaptationType, CommandAction, SeedState, TopicName, adaptation_type_of, deterministic_event_id
from services.tamiyo.decider import FAMILIES, Decider, family_of, record
from services.tamiyo.features import FEATURES, INDEX, build_graph, slope
from services.tamiyo.policy import PolicyOutput
from services.tamiyo.run_state import RejectedEvent, RunState
from services.tamiyo.service import fold
from tests.tamiyo_events import FixedChooser, epoch_event, health, plateau_run, session, transition


class ScriptedPolicy:
    """Stands in for the GNN: adapts with a fixed probability, scores slots by their dead-unit ratio."""

    def __init__(self, p: float = 0.9, family: str = "bottleneck") -> None:
        self.p = p
        self.family = family
        self.calls = 0

    def decide(self, x: torch.Tensor, edge_index: torch.Tensor) -> PolicyOutput:
        self.calls += 1
        probs = torch.full((len(FAMILIES),), 0.01)
        probs[FAMILIES.index(self.family)] = 0.9
        return PolicyOutput(adapt_probability=torch.tensor(self.p), node_scores=x[:, INDEX["dead_neuron_ratio"]],
                            blueprint_probabilities=probs, urgency=torch.tensor(0.7), value=torch.tensor(0.0))


def fold_all(events, run: RunState | None = None) -> RunState:
    run = run or RunState("run-1")
    for topic, payload in events:
        fold(run, topic, payload)
    return run


def decide_all(run: RunState, decider: Decider) -> list:
    out = []
    for epoch in run.ready_epochs():
        for action in decider.decide(run, epoch):
            record(run, action.decision)
            out.append(action)
    return out


def test_an_epoch_is_complete_only_when_everything_it_declared_has_arrived():
    events = plateau_run(epochs=2)
    run = RunState("run-1")
    epoch0 = [e for e in events if getattr(e[1], "epoch", None) == 0 or e[0] != TopicName.TELEMETRY_SEED_HEALTH.value]
    fold(run, *events[0])  # the session
    fold(run, TopicName.SYSTEM_EVENTS_EPOCH.value, epoch_event(0, 0.4))
    assert run.ready_epochs() == []  # 4 health signals declared, none here yet
    for topic, payload in events[1:4]:
        fold(run, topic, payload)
    assert run.ready_epochs() == []
    fold(run, *events[4])
    assert run.ready_epochs() == [0]
    assert len(epoch0) > 0


def test_interleaving_of_topics_does_not_change_the_decisions():
    events = plateau_run(epochs=6, budget=2)
    reference = [a.decision for a in decide_all(fold_all(events), Decider(ScriptedPolicy(), "v", FixedChooser()))]
    by_topic: dict[str, list] = {}
    for topic, payload in events:
        by_topic.setdefault(topic, []).append((topic, payload))
    rng = random.Random(3)
    for _ in range(5):
        queues = [list(q) for q in by_topic.values()]
        run, decider, got = RunState("run-1"), Decider(ScriptedPolicy(), "v", FixedChooser()), []
        while any(queues):  # each topic in order, topics interleaved at random, deciding as epochs complete
            queue = rng.choice([q for q in queues if q])
            fold(run, *queue.pop(0))
            got += [a.decision for a in decide_all(run, decider)]
        assert [d.model_dump(exclude={"timestamp"}) for d in got] == \
               [d.model_dump(exclude={"timestamp"}) for d in reference]


def test_bad_events_are_rejected_with_a_reason():
    run = fold_all(plateau_run(epochs=1))
    with pytest.raises(RejectedEvent, match="no seed slot 99:0"):
        run.apply_health(health(1, 99, 0))
    with pytest.raises(RejectedEvent, match="second health signal"):
        run.apply_health(health(0, 11, 0))
    with pytest.raises(RejectedEvent, match="second EpochCompleted"):
        run.apply_epoch(epoch_event(0, 0.5))


def test_features_describe_layers_and_seeds_with_data_flow_edges():
    run = fold_all(plateau_run(epochs=3))
    graph = build_graph(run, 2)
    assert graph.x.shape == (2 + 4, len(FEATURES))
    assert torch.isfinite(graph.x).all()
    edges = set(map(tuple, graph.edge_index.t().tolist()))
    assert (0, 1) in edges  # body.0 -> body.2
    assert {(0, 2), (2, 0), (1, 4), (4, 1)} <= edges  # each layer <-> its seeds
    assert graph.x[1, INDEX["dead_neuron_ratio"]] == pytest.approx(0.45)
    assert graph.x[0, INDEX["is_layer"]] == 1 and graph.x[2, INDEX["is_seed"]] == 1
    assert slope([0.4, 0.4, 0.4]) == 0 and slope([0.1, 0.2, 0.3]) == pytest.approx(0.1)


def test_the_policy_grows_in_the_slot_it_scores_highest_with_a_kernel_of_its_family():
    chooser = FixedChooser()
    actions = decide_all(fold_all(plateau_run(epochs=1)), Decider(ScriptedPolicy(family="bottleneck"), "v1", chooser))
    (action,) = actions
    decision, command = action.decision, action.command
    assert decision.adaptation_type is AdaptationType.ADD_SEED and command.action is CommandAction.GERMINATE
    assert (command.layer_id, command.layer_name) == (22, "body.2")  # the layer with dying units
    assert command.kernel_id == "kernel-bottleneck-8-8" and chooser.asked == [([8], [8])]
    assert command.issued_at_epoch == 1 and command.decision_id == decision.decision_id
    assert decision.policy_version == "v1" and decision.features["dead_neuron_ratio"] == pytest.approx(0.45)


def test_budget_cooldown_and_pending_commands_limit_germinations():
    # Commands that never take effect count as pending for two epochs, then as lost.
    actions = decide_all(
        fold_all(plateau_run(epochs=6, budget=2, cooldown=3)), Decider(ScriptedPolicy(), "v", FixedChooser())
    )
    grown = [a.decision.epoch for a in actions if a.command and a.command.action is CommandAction.GERMINATE]
    assert grown == [0, 2, 4]
    assert all(a.decision.adaptation_type is AdaptationType.NO_OP for a in actions if a.decision.epoch in (1, 3, 5))
    assert len({a.decision.decision_id for a in actions}) == len(actions) == 6

    # Applied at epoch 1: the cooldown runs from there (next at epoch 3); at epoch 4 the budget of 2 is
    # spent (one applied, one pending).
    events = plateau_run(epochs=5, budget=2, cooldown=3)
    first = deterministic_event_id("run-1", "command", 0, 50)
    applied = [(TopicName.LIFECYCLE_SEED_TRANSITIONS.value, t) for t in (
        transition(1, 22, 0, SeedState.DORMANT, SeedState.GERMINATED, first),
        transition(1, 22, 0, SeedState.GERMINATED, SeedState.TRAINING, first))]
    events = [e if getattr(e[1], "state", None) is None or e[1].state.epoch != 1
              else (e[0], epoch_event(1, 0.4, transitions=2)) for e in events] + applied
    actions = decide_all(fold_all(events), Decider(ScriptedPolicy(), "v", FixedChooser()))
    grown = [a.decision.epoch for a in actions if a.command and a.command.action is CommandAction.GERMINATE]
    assert grown == [0, 3]
    assert actions[0].command.command_id == first


def test_no_germination_when_adaptation_is_off_or_no_kernel_fits():
    policy = ScriptedPolicy()
    actions = decide_all(fold_all(plateau_run(epochs=2, enabled=False)), Decider(policy, "v", FixedChooser()))
    assert [a.decision.adaptation_type for a in actions] == [AdaptationType.NO_OP] * 2 and policy.calls == 0
    actions = decide_all(fold_all(plateau_run(epochs=1)), Decider(ScriptedPolicy(), "v", FixedChooser(families=())))
    (action,) = actions
    assert action.command is None and "no characterised kernel fits [8] -> [8]" in action.decision.reason


def test_lifecycle_is_driven_by_readiness_when_kasmina_does_not_auto_advance():
    events = plateau_run(epochs=1, budget=1)
    run = fold_all(events)
    decide_all(run, Decider(ScriptedPolicy(), "v", FixedChooser()))
    command_id = run.issued[0].command_id
    ready = [(TopicName.LIFECYCLE_SEED_TRANSITIONS.value, t) for t in (
        transition(1, 22, 0, SeedState.DORMANT, SeedState.GERMINATED, command_id),
        transition(1, 22, 0, SeedState.GERMINATED, SeedState.TRAINING, command_id))]
    signals = [(TopicName.TELEMETRY_SEED_HEALTH.value, health(1, lid, k, ready=(lid, k) == (22, 0)))
               for lid in (11, 22) for k in (0, 1)]
    fold_all(ready + signals + [(TopicName.SYSTEM_EVENTS_EPOCH.value, epoch_event(1, 0.5, transitions=2))], run)
    (action,) = decide_all(run, Decider(ScriptedPolicy(), "v", FixedChooser()))
    assert action.command.action is CommandAction.ADVANCE and (action.command.layer_id, action.command.seed_idx) == (
        22,
        0,
    )

    auto = fold_all(plateau_run(epochs=1, budget=0, auto_advance=True))
    fold_all(ready + signals + [(TopicName.SYSTEM_EVENTS_EPOCH.value, epoch_event(1, 0.5, transitions=2))], auto)
    assert all(a.command is None for a in decide_all(auto, Decider(ScriptedPolicy(), "v", FixedChooser())))


def test_blueprint_families_follow_the_ops():
    from services.blueprints.starter import conv_adapter, linear_residual, mlp_adapter

    assert family_of(mlp_adapter(8, 8, 16).architecture) == "mlp"
    assert family_of(mlp_adapter(8, 8, 64).architecture) == "mlp_wide"
    assert family_of(linear_residual(8, 8).architecture) == "bottleneck"
    assert family_of(conv_adapter([1, 8, 8], [4, 8, 8]).architecture) == "conv"
    assert session().session.training_config.auto_advance is False


def test_a_completed_run_is_forgotten_once_every_epoch_is_decided():
    from contracts import SessionStatus
    from services.tamiyo.run_state import Runs

    runs = Runs()
    run = runs.get("run-1")
    fold_all(plateau_run(epochs=2), run)
    fold(run, TopicName.TRAINING_SESSIONS.value, session(status=SessionStatus.COMPLETED, epochs=2))
    assert not runs.forget_if_done(run) and "run-1" in runs.runs  # nothing decided yet
    decide_all(run, Decider(ScriptedPolicy(p=0.0), "v", FixedChooser()))
    assert runs.forget_if_done(run) and "run-1" not in runs.runs


def test_lifecycle_indices_skip_the_reserved_ones_and_keep_the_first_fifty():
    from services.tamiyo.decider import GERMINATION_INDEX, NO_KERNEL_INDEX, RESERVED_INDICES, lifecycle_index

    indices = [lifecycle_index(n) for n in range(300)]
    assert indices[:50] == list(range(50))  # the ids every run decided so far stay the same
    assert not RESERVED_INDICES & set(indices) and indices == sorted(set(indices))
    assert {GERMINATION_INDEX, NO_KERNEL_INDEX} == RESERVED_INDICES


def test_many_lifecycle_decisions_and_a_germination_in_one_epoch_have_distinct_ids():
    from contracts import Seed

    trained = 60  # more lifecycle decisions than indices below the germination's
    seeds = [Seed(layer_id=22, seed_idx=k, layer_name="body.2") for k in range(trained + 1)]
    events = [(TopicName.TRAINING_SESSIONS.value, session(seeds=seeds, budget=1000))]
    for k in range(trained):
        events += [(TopicName.LIFECYCLE_SEED_TRANSITIONS.value, transition(0, 22, k, frm, to)) for frm, to in
                   ((SeedState.DORMANT, SeedState.GERMINATED), (SeedState.GERMINATED, SeedState.TRAINING))]
    events += [(TopicName.TELEMETRY_SEED_HEALTH.value, health(0, 22, k, ready=k < trained, dead=0.45))
               for k in range(trained + 1)]
    events.append((TopicName.SYSTEM_EVENTS_EPOCH.value,
                   epoch_event(0, 0.4, signals=trained + 1, transitions=2 * trained)))
    actions = decide_all(fold_all(events), Decider(ScriptedPolicy(), "v", FixedChooser()))
    advanced = [a for a in actions if a.decision.action is CommandAction.ADVANCE]
    grown = [a for a in actions if a.decision.action is CommandAction.GERMINATE]
    assert len(advanced) == trained and len(grown) == 1 and grown[0].command.seed_idx == trained
    assert len({a.decision.decision_id for a in actions}) == len(actions) == trained + 1
    assert len({a.command.command_id for a in actions}) == len(actions)
    for a in actions:  # the decision names its command, and its coarse type follows the action
        assert (a.decision.command_id, a.decision.action) == (a.command.command_id, a.command.action)
        assert a.decision.adaptation_type is adaptation_type_of(a.decision.action)
    assert grown[0].decision.family == "bottleneck" and advanced[0].decision.family is None


def test_advance_and_fossilize_decisions_say_which():
    events = plateau_run(epochs=1, budget=1)
    run = fold_all(events)
    decide_all(run, Decider(ScriptedPolicy(), "v", FixedChooser()))
    command_id = run.issued[0].command_id
    grow = [(TopicName.LIFECYCLE_SEED_TRANSITIONS.value, t) for t in (
        transition(1, 22, 0, SeedState.DORMANT, SeedState.GERMINATED, command_id),
        transition(1, 22, 0, SeedState.GERMINATED, SeedState.TRAINING, command_id))]
    signals = [(TopicName.TELEMETRY_SEED_HEALTH.value, health(e, lid, k, ready=(lid, k) == (22, 0)))
               for e in (1, 2) for lid in (11, 22) for k in (0, 1)]
    fold_all(grow + signals[:4] + [(TopicName.SYSTEM_EVENTS_EPOCH.value, epoch_event(1, 0.5, transitions=2))], run)
    (advance,) = decide_all(run, Decider(ScriptedPolicy(), "v", FixedChooser()))
    fold_all([(TopicName.LIFECYCLE_SEED_TRANSITIONS.value,
               transition(2, 22, 0, SeedState.TRAINING, SeedState.GRAFTING, advance.command.command_id))]
             + signals[4:] + [(TopicName.SYSTEM_EVENTS_EPOCH.value, epoch_event(2, 0.5, transitions=1))], run)
    (fossilize,) = decide_all(run, Decider(ScriptedPolicy(), "v", FixedChooser()))
    assert [a.decision.action for a in (advance, fossilize)] == [CommandAction.ADVANCE, CommandAction.FOSSILIZE]
    assert {a.decision.adaptation_type for a in (advance, fossilize)} == {AdaptationType.MODIFY_ARCHITECTURE}


def test_a_fork_is_decided_from_its_first_epoch_with_its_seeds_where_the_parent_left_them():
    """A fork of epoch 3 publishes epochs from 4 on; its session says seed 22:0 is TRAINING (grown in the parent)."""
    base = session(budget=1)
    seeds = [s.model_copy(update={"state": SeedState.TRAINING}) if (s.layer_id, s.seed_idx) == (22, 0) else s
             for s in base.session.seeds]
    forked = base.model_copy(update={"session": base.session.model_copy(update={"seeds": seeds}),
                                     "parent_run_id": "parent", "fork_epoch": 3})
    signals = [(TopicName.TELEMETRY_SEED_HEALTH.value, health(4, lid, k, ready=(lid, k) == (22, 0)))
               for lid in (11, 22) for k in (0, 1)]
    epoch4 = [*signals, (TopicName.SYSTEM_EVENTS_EPOCH.value, epoch_event(4, 0.5))]
    run = fold_all([(TopicName.TRAINING_SESSIONS.value, forked), *epoch4])
    assert run.ready_epochs() == [4] and run.seed_states(4) == {(22, 0): (SeedState.TRAINING, 3)}
    actions = decide_all(run, Decider(ScriptedPolicy(), "v", FixedChooser()))
    # The seed grown in the parent spent the budget of 1: no germination, only the advance it is ready for.
    assert [(a.command.action, a.command.layer_id, a.command.seed_idx) for a in actions if a.command] == [
        (CommandAction.ADVANCE, 22, 0)]
    assert run.germinations(4) == [3]
    plain = fold_all([(TopicName.TRAINING_SESSIONS.value, session(budget=1)), *epoch4])
    assert plain.ready_epochs() == [] and plain.seed_states(4) == {}  # a run that is no fork waits for epoch 0
