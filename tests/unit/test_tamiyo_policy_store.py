"""Policies as weights-only artifacts; the shipped initial policy; learning from outcomes."""

from __future__ import annotations

import json

import pytest

from contracts import CommandAction
from services.tamiyo.decider import FAMILIES, Decider
from services.tamiyo.features import FEATURES
from services.tamiyo.policy import TamiyoPolicy
from services.tamiyo.policy_store import INITIAL_POLICY, PolicyError, load_policy, save_policy
from services.tamiyo.teacher import agreement, bootstrap_policy, synthetic_dataset, teacher
from services.tamiyo.training import Sample, train_on_samples
from tests.tamiyo_events import FixedChooser, plateau_run
from tests.unit.test_tamiyo_decisions import fold_all


def test_save_and_load_round_trip_keeps_weights_and_version(tmp_path):
    policy = TamiyoPolicy(len(FEATURES), hidden=16, layers=2, blueprints=len(FAMILIES))
    path = save_policy(policy, tmp_path, "test", {"x": 1.0})
    loaded, record_ = load_policy(path)
    assert record_.version == policy.version() == loaded.version() and record_.hidden == 16
    assert not (tmp_path / f"{policy.version()}.safetensors").read_bytes().startswith(b"\x80")  # not a pickle


def test_unusable_policy_files_give_one_line_errors(tmp_path):
    policy = TamiyoPolicy(len(FEATURES), hidden=8, layers=1, blueprints=len(FAMILIES))
    path = save_policy(policy, tmp_path, "test", name="p")
    weights = tmp_path / "p.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[:100])
    with pytest.raises(PolicyError, match="corrupt weights"):
        load_policy(path)
    weights.write_bytes(good)
    meta = json.loads(path.read_text())
    path.write_text(json.dumps(meta | {"version": "gnn-000000000000"}))
    with pytest.raises(PolicyError, match="weights hash to"):
        load_policy(path)
    path.write_text(json.dumps(meta | {"features": ["other"]}))
    with pytest.raises(PolicyError, match="other features"):
        load_policy(path)
    with pytest.raises(PolicyError, match="not found"):
        load_policy(tmp_path / "missing.json")
    for error in (PolicyError("x"),):
        assert "\n" not in str(error)


def test_the_shipped_policy_agrees_with_its_teacher_and_grows_where_units_die():
    policy, record_ = load_policy(INITIAL_POLICY)
    assert record_.metrics["adapt_agreement"] > 0.9
    scores = agreement(policy, synthetic_dataset(150, seed=99))  # runs it never saw
    assert scores["adapt_agreement"] > 0.85 and scores["slot_agreement"] > 0.85, scores
    run = fold_all(plateau_run(epochs=2))
    actions = Decider(policy, record_.version, FixedChooser()).decide(run, 1)
    grow = [a for a in actions if a.command and a.command.action is CommandAction.GERMINATE]
    assert grow and grow[0].command.layer_name == "body.2"  # 45% dead units there
    assert grow[0].decision.family == "bottleneck"
    again = Decider(policy, record_.version, FixedChooser()).decide(fold_all(plateau_run(epochs=2)), 1)
    assert [a.decision.model_dump(exclude={"timestamp"}) for a in again] == \
           [a.decision.model_dump(exclude={"timestamp"}) for a in actions]  # deterministic


def test_bootstrap_learns_the_teacher_quickly():
    policy, metrics = bootstrap_policy(samples=300, epochs=3, seed=1, hidden=32)
    assert metrics["adapt_agreement"] > 0.8, metrics
    graph, label = synthetic_dataset(1, seed=5)[0]
    assert teacher(graph) == label


def test_training_on_outcomes_moves_the_policy_toward_rewarded_choices():
    policy, _ = load_policy(INITIAL_POLICY)
    run = fold_all(plateau_run(epochs=2))
    from services.tamiyo.features import build_graph

    graph = build_graph(run, 1)
    dormant = [s.node for s in graph.seeds]
    good, bad = dormant[0], dormant[-1]
    samples = [Sample(graph, good, FAMILIES.index("mlp"), 0.2), Sample(graph, bad, FAMILIES.index("conv"), -0.1)]
    before = policy.decide(graph.x, graph.edge_index)
    trained, metrics = train_on_samples(policy, samples, epochs=15)
    after = trained.decide(graph.x, graph.edge_index)
    assert trained.version() != policy.version() and metrics["samples"] == 2
    margin = lambda out: float(out.node_scores[good] - out.node_scores[bad])  # noqa: E731
    assert margin(after) > margin(before)
    assert float(after.blueprint_probabilities[FAMILIES.index("mlp")]) > \
           float(before.blueprint_probabilities[FAMILIES.index("mlp")])
    assert metrics["loss_last_epoch"] < metrics["loss_first_epoch"]
