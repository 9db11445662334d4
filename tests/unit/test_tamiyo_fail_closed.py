"""Tamiyo fails closed: what a valid session allows never raises, and nothing is grown on non-finite evidence.

Also the pure parts of totality and bounded memory: event-id duplicates and conflicts per run in a
bounded window, forgotten runs (done and failed), and the records of its own decisions topic.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import (
    AdaptationDecision,
    AdaptationType,
    CommandAction,
    LayerSpec,
    Seed,
    SessionStatus,
    TopicName,
)
from services.oona.codec import SingleObjectCodec
from services.oona.topic_registry import topic_spec
from services.tamiyo.decider import FAMILIES, Decider
from services.tamiyo.decision_log import PastDecision, parse_decision
from services.tamiyo.features import FEATURES, INDEX, build_graph
from services.tamiyo.policy import PolicyOutput
from services.tamiyo.policy_store import load_policy
from services.tamiyo.run_state import RejectedEvent, Runs, RunState, content_digest
from services.tamiyo.service import fold
from tests.tamiyo_events import FixedChooser, epoch_event, health, plateau_run, session

HEALTH = TopicName.TELEMETRY_SEED_HEALTH.value
EPOCHS = TopicName.SYSTEM_EVENTS_EPOCH.value
SESSIONS = TopicName.TRAINING_SESSIONS.value


class ScriptedPolicy:
    """Stands in for the GNN with fixed outputs (any of them may be made NaN)."""

    def __init__(self, p: float = 0.9, scores: float | None = None, family: float = 0.9,
                 urgency: float = 0.7) -> None:
        self.p, self.scores, self.family, self.urgency = p, scores, family, urgency
        self.calls = 0

    def decide(self, x: torch.Tensor, edge_index: torch.Tensor) -> PolicyOutput:
        self.calls += 1
        probs = torch.full((len(FAMILIES),), 0.01)
        probs[FAMILIES.index("bottleneck")] = self.family
        scores = x[:, INDEX["dead_neuron_ratio"]] if self.scores is None else torch.full((x.shape[0],), self.scores)
        return PolicyOutput(adapt_probability=torch.tensor(self.p), node_scores=scores, blueprint_probabilities=probs,
                            urgency=torch.tensor(self.urgency), value=torch.tensor(0.0))


class RaisingPolicy:
    def decide(self, x: torch.Tensor, edge_index: torch.Tensor) -> PolicyOutput:
        raise RuntimeError("shape mismatch in the policy")


def fold_all(events) -> RunState:
    run = RunState("run-1")
    for topic, payload in events:
        fold(run, topic, payload)
    return run


def decide_epochs(run: RunState, decider: Decider) -> list:
    return [a for epoch in run.ready_epochs() for a in decider.decide(run, epoch)]


def assert_no_op(actions: list, reason: str) -> None:
    assert [a.decision.adaptation_type for a in actions] == [AdaptationType.NO_OP], actions
    assert all(a.command is None for a in actions)
    assert reason in actions[0].decision.reason, actions[0].decision.reason
    for action in actions:  # the record stays a valid, finite decision
        decision = AdaptationDecision.model_validate(action.decision.model_dump())
        assert all(math.isfinite(v) for v in decision.features.values())
        assert 0 <= decision.confidence <= 1 and 0 <= decision.urgency <= 1


def with_signal(events, epoch: int, **changes) -> list:
    """``events`` with the (11, 0) health signal of ``epoch`` changed (unvalidated: bytes on the log may hold it)."""
    out = []
    for topic, payload in events:
        if topic == HEALTH and (payload.epoch, payload.layer_id, payload.seed_idx) == (epoch, 11, 0):
            payload = payload.model_copy(update=changes)
        out.append((topic, payload))
    return out


# -- sessions a valid run config allows ---------------------------------------------------------------------
def test_a_session_without_seed_slots_is_answered_with_a_no_op():
    # `seeds.target_layers: []`: no layers, no seeds, EpochCompleted declaring no health signals.
    events = [(SESSIONS, session(layers=[], seeds=[]))] + [(EPOCHS, epoch_event(e, 0.4, signals=0)) for e in range(2)]
    policy = ScriptedPolicy()
    actions = decide_epochs(fold_all(events), Decider(policy, "v", FixedChooser()))
    assert [a.decision.epoch for a in actions] == [0, 1] and policy.calls == 0
    for action in actions:
        assert_no_op([action], "declares no seed slots")


def test_seed_slots_on_undeclared_layers_are_never_grown():
    ghost = LayerSpec(name="body.4", layer_id=33, kind="linear", input_shape=[8], output_shape=[8])
    seeds = [Seed(layer_id=33, seed_idx=k, layer_name=ghost.name) for k in (0, 1)]
    events = [(SESSIONS, session(seeds=seeds))]
    for epoch in range(2):
        events += [(HEALTH, health(epoch, 33, k, dead=0.5)) for k in (0, 1)]
        events.append((EPOCHS, epoch_event(epoch, 0.4, signals=2)))
    run = fold_all(events)  # the slots exist, so their signals are accepted
    actions = decide_epochs(run, Decider(ScriptedPolicy(), "v", FixedChooser()))
    assert len(actions) == 2
    for action in actions:
        assert_no_op([action], "undeclared layers [33]")


def test_a_seed_on_an_undeclared_layer_does_not_stop_growth_in_a_declared_one():
    seeds = [Seed(layer_id=33, seed_idx=0, layer_name="body.4"), Seed(layer_id=22, seed_idx=0, layer_name="body.2")]
    events = [(SESSIONS, session(seeds=seeds)), (HEALTH, health(0, 33, 0, dead=0.9)),
              (HEALTH, health(0, 22, 0, dead=0.1)), (EPOCHS, epoch_event(0, 0.4, signals=2))]
    (action,) = decide_epochs(fold_all(events), Decider(ScriptedPolicy(), "v", FixedChooser()))
    assert action.command.action is CommandAction.GERMINATE and action.command.layer_id == 22


# -- non-finite evidence ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [("activation_variance", math.inf), ("gradient_norm", math.nan),
                                          ("execution_latency", -5.0), ("dead_neuron_ratio", math.inf)])
def test_non_finite_features_never_germinate_even_with_the_real_policy(field, value):
    policy, record = load_policy()
    events = with_signal(plateau_run(epochs=1), 0, **{field: value})
    run = fold_all(events)
    graph = build_graph(run, 0)
    assert graph.non_finite(), "the bad value must show as a non-finite feature"
    actions = decide_epochs(run, Decider(policy, record.version, FixedChooser()))
    assert_no_op(actions, "non-finite features")


def test_the_real_policy_germinates_on_the_same_run_when_the_features_are_finite():
    # The control for the test above: the fail-closed path is what stops it, not the policy's mood.
    policy, record = load_policy()
    actions = decide_epochs(fold_all(plateau_run(epochs=1)), Decider(policy, record.version, FixedChooser()))
    assert torch.isfinite(build_graph(fold_all(plateau_run(epochs=1)), 0).x).all()
    assert any(a.command and a.command.action is CommandAction.GERMINATE for a in actions), actions


@pytest.mark.parametrize("outputs, named", [({"p": math.nan}, "adapt_probability"),
                                            ({"scores": math.nan}, "node_scores"),
                                            ({"family": math.nan}, "blueprint_probabilities"),
                                            ({"urgency": math.inf}, "urgency")])
def test_non_finite_policy_outputs_never_germinate(outputs, named):
    actions = decide_epochs(fold_all(plateau_run(epochs=1)), Decider(ScriptedPolicy(**outputs), "v", FixedChooser()))
    assert_no_op(actions, "policy's output is not finite")
    assert named in actions[0].decision.reason


def test_an_error_while_deciding_is_a_no_op_not_an_exception():
    actions = decide_epochs(fold_all(plateau_run(epochs=2)), Decider(RaisingPolicy(), "v", FixedChooser()))
    assert [a.decision.epoch for a in actions] == [0, 1]
    for action in actions:
        assert_no_op([action], "deciding failed (RuntimeError: shape mismatch")


def test_features_of_a_missing_node_are_empty_and_non_finite_ones_left_out():
    graph = build_graph(fold_all(with_signal(plateau_run(epochs=1), 0, activation_variance=math.inf)), 0)
    assert graph.features_of(graph.x.shape[0]) == {}
    assert "log_activation_variance" in graph.non_finite()
    seed = next(s.node for s in graph.seeds if (s.layer_id, s.seed_idx) == (11, 0))
    assert "log_activation_variance" not in graph.features_of(seed) and len(graph.features_of(seed)) < len(FEATURES)


# -- event ids -----------------------------------------------------------------------------------------------
def test_an_exact_duplicate_is_skipped_and_a_conflict_rejected():
    run = RunState("run-1")
    signal = health(0, 11, 0)
    digest = content_digest(HEALTH, signal)
    assert run.admit("e1", digest) is True
    assert run.admit("e1", content_digest(HEALTH, signal.model_copy())) is False  # same content
    with pytest.raises(RejectedEvent, match="event id conflict: e1"):
        run.admit("e1", content_digest(HEALTH, health(0, 11, 0, score=0.5)))
    with pytest.raises(RejectedEvent, match="event id conflict"):
        run.admit("e1", content_digest(EPOCHS, signal))  # the same payload on another topic is other content
    assert run.admit("e1", digest) is False  # the first one stands


def test_event_ids_are_remembered_in_a_bounded_window_per_run():
    run = RunState("run-1")
    digests = [content_digest(HEALTH, health(i, 11, 0)) for i in range(50)]
    for i, digest in enumerate(digests):
        assert run.admit(f"e{i}", digest, window=10)
    assert len(run.event_ids) == 10 and "e0" not in run.event_ids and "e49" in run.event_ids
    assert run.admit("e49", digests[49], window=10) is False


# -- forgetting runs -----------------------------------------------------------------------------------------
def test_failed_runs_are_forgotten_and_their_late_events_recognised():
    runs = Runs(finished_window=3)
    run = runs.get("run-1")
    for topic, payload in plateau_run(epochs=2):
        fold(run, topic, payload)
    fold(run, SESSIONS, session(status=SessionStatus.FAILED))
    running = runs.get("run-2")
    fold(running, *plateau_run(epochs=1)[0])
    assert runs.forget_failed() == [] and run.ready_epochs() == [0, 1]  # its epochs are decided first
    run.decided |= {0, 1}
    assert runs.forget_failed() == ["run-1"]
    assert set(runs.runs) == {"run-2"} and runs.ended("run-1") == "failed" and runs.ended("run-2") is None
    for i in range(5):  # the set of forgotten runs is bounded too
        runs.forget(f"old-{i}", "completed")
    assert len(runs.finished) == 3 and runs.ended("run-1") is None


def test_a_failed_run_that_was_resumed_is_not_forgotten():
    runs = Runs()
    run = runs.get("run-1")
    for topic, payload in plateau_run(epochs=1):
        fold(run, topic, payload)
    fold(run, SESSIONS, session(status=SessionStatus.FAILED))
    fold(run, SESSIONS, session(status=SessionStatus.RUNNING))
    assert runs.forget_failed() == [] and "run-1" in runs.runs


# -- the decisions topic -------------------------------------------------------------------------------------
def test_records_of_the_decisions_topic_are_decisions_or_reasons():
    codec = SingleObjectCodec()
    spec = topic_spec(TopicName.CONTROL_TAMIYO_DECISIONS.value)
    decision = AdaptationDecision(decision_id="d1", layer_name="-", adaptation_type=AdaptationType.NO_OP,
                                  confidence=1.0, urgency=0.0, epoch=3)
    good = codec.encode(spec, spec.message_type(sender_id="t", topic=spec.name, run_id="run-1", payload=decision))
    parsed = parse_decision(codec, spec, good)
    assert isinstance(parsed, PastDecision) and parsed.run_id == "run-1" and parsed.decision.epoch == 3
    runless = codec.encode(spec, spec.message_type(sender_id="t", topic=spec.name, payload=decision))
    assert "has no run_id" in parse_decision(codec, spec, runless)
    newer = b"\xc3\x01" + b"\x99" * 8 + good[10:]  # a fingerprint no schema of ours has
    for value, reason in ((None, "no value"), (b"\x00garbage", "undecodable"), (newer, "unknown writer schema")):
        got = parse_decision(codec, spec, value)
        assert isinstance(got, str) and reason in got, got


# -- any values at all -------------------------------------------------------------------------------------
_any_float = st.floats(allow_nan=True, allow_infinity=True, width=64)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(values=st.lists(st.tuples(st.sampled_from(["activation_variance", "dead_neuron_ratio", "avg_correlation",
                                                  "gradient_norm", "health_score", "execution_latency"]), _any_float),
                       max_size=4),
       p=_any_float, score=_any_float, urgency=_any_float,
       layout=st.sampled_from(["default", "no seeds", "undeclared"]))
def test_whatever_the_numbers_deciding_never_raises_and_grows_only_on_finite_evidence(values, p, score, urgency,
                                                                                       layout):
    if layout == "no seeds":
        events = [(SESSIONS, session(layers=[], seeds=[])), (EPOCHS, epoch_event(0, 0.4, signals=0))]
    elif layout == "undeclared":
        seeds = [Seed(layer_id=11, seed_idx=0, layer_name="body.0"), Seed(layer_id=33, seed_idx=0, layer_name="x")]
        events = [(SESSIONS, session(seeds=seeds)), (HEALTH, health(0, 11, 0)), (HEALTH, health(0, 33, 0)),
                  (EPOCHS, epoch_event(0, 0.4, signals=2))]
    else:
        events = plateau_run(epochs=1)
    events = with_signal(events, 0, **dict(values))
    run = fold_all(events)
    actions = decide_epochs(run, Decider(ScriptedPolicy(p=p, scores=score, urgency=urgency), "v", FixedChooser()))
    assert actions and {a.decision.epoch for a in actions} == {0}
    for action in actions:
        AdaptationDecision.model_validate(action.decision.model_dump())  # a record that can be published
    if any(a.command and a.command.action is CommandAction.GERMINATE for a in actions):
        assert not build_graph(run, 0).non_finite() and math.isfinite(p) and p >= 0.5
        assert math.isfinite(score) and math.isfinite(urgency)
        assert layout != "no seeds" and all(a.command.layer_id != 33 for a in actions if a.command)
