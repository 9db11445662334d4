"""Width and depth seeds in Tamiyo's loop: the layers' shapes derived from the log (a fossilized width seed
widens its layer and its consumer), Kasmina's width rules kept, the teacher's width rule, Karn's answer."""

from __future__ import annotations

import pytest

from contracts import (
    FieldReport,
    FieldReportOutcome,
    HealthSignal,
    LayerEdge,
    LayerSpec,
    SeedState,
    SeedTransition,
    TopicName,
)
from services.blueprints.starter import for_slot, width_units
from services.karn.generator import Generator
from services.tamiyo.decider import FAMILIES, Decider, family_of, record
from services.tamiyo.features import build_graph
from services.tamiyo.policy_store import load_policy
from services.tamiyo.shapes import derive
from services.tamiyo.teacher import teacher
from tests.tamiyo_events import FixedChooser, epoch_event, health, plateau_run, session
from tests.unit.test_tamiyo_decisions import ScriptedPolicy, decide_all, fold_all

G, T, F, C = SeedState.GERMINATED, SeedState.TRAINING, SeedState.GRAFTING, SeedState.FOSSILIZED
MLP = [LayerSpec(name="body.0", layer_id=1, kind="linear", input_shape=[2], output_shape=[8]),
       LayerSpec(name="body.2", layer_id=2, kind="linear", input_shape=[8], output_shape=[6])]
EDGES = [LayerEdge(source="body.0", target="body.2")]


def moves(layer_id: int, seed_idx: int, kernel: str, *states_at: tuple[SeedState, int]) -> list[SeedTransition]:
    out, frm = [], SeedState.DORMANT
    for to, epoch in states_at:
        out.append(SeedTransition(layer_id=layer_id, seed_idx=seed_idx, from_state=frm, to_state=to, epoch=epoch,
                                  kernel_id=kernel))
        frm = to
    return out


def units(kernel_id: str) -> int:
    return int(kernel_id.removeprefix("w")) if kernel_id.startswith("w") else 0


def test_a_fossilized_width_seed_widens_its_layer_and_the_next_layers_input():
    log = moves(1, 0, "w4", (G, 0), (T, 0), (F, 2), (C, 3))
    before = derive(MLP, EDGES, log, 2, units, num_classes=3)
    assert before.shapes == {1: ([2], [8]), 2: ([8], [6])}
    assert before.widening == {1, 2} and not before.any_seed_ok(1) and not before.any_seed_ok(2)
    after = derive(MLP, EDGES, log, 3, units, num_classes=3)
    assert after.shapes == {1: ([2], [12]), 2: ([12], [6])}
    assert not after.widening and after.width_ok(1) and after.width_ok(2)
    # a second one adds on; a culled one changes nothing
    log += moves(1, 1, "w2", (G, 4), (T, 4), (F, 5), (C, 6)) + moves(2, 0, "w3", (G, 4), (SeedState.CULLED, 5))
    assert derive(MLP, EDGES, log, 6, units, num_classes=3).shapes == {1: ([2], [14]), 2: ([14], [6])}


def test_a_linear_after_feature_maps_gets_a_column_per_pooled_position_and_the_output_layer_no_width():
    cnn = [LayerSpec(name="features.2", layer_id=1, kind="conv2d", input_shape=[4, 8, 8], output_shape=[8, 8, 8]),
           LayerSpec(name="head", layer_id=2, kind="linear", input_shape=[32], output_shape=[3])]
    growth = derive(cnn, [LayerEdge(source="features.2", target="head")], moves(1, 0, "w2", (C, 1)), 1, units, 3)
    assert growth.shapes == {1: ([4, 8, 8], [10, 8, 8]), 2: ([40], [3])}
    assert growth.width_ok(1) and not growth.width_ok(2)  # the head has no consumer


def test_kernels_that_stay_block_width_seeds_on_their_layer_and_the_one_before():
    branch = moves(2, 0, "branch", (G, 0), (T, 0), (F, 1), (C, 2))  # a side branch keeps its kernel
    growth = derive(MLP, EDGES, branch, 2, units, 3)
    assert growth.holds_kernel == {2} and not growth.width_ok(1) and not growth.width_ok(2)
    assert growth.any_seed_ok(1) and growth.any_seed_ok(2)
    culled = moves(2, 0, "branch", (G, 0), (SeedState.CULLED, 1))
    assert derive(MLP, EDGES, culled, 2, units, 3).width_ok(1)


def test_the_decider_asks_for_kernels_of_the_widened_shapes_and_keeps_kasminas_width_rules():
    # body.0 (2 -> 8) took a width seed of 4 units (FixedChooser: kernel-width-* adds 4), fossilized at epoch 2.
    events = [e for e in plateau_run(epochs=4) if e[0] != TopicName.SYSTEM_EVENTS_EPOCH.value]
    grown = moves(11, 0, "kernel-width-2-8", (G, 0), (T, 0), (F, 1), (C, 2))
    counts = {0: 2, 1: 1, 2: 1, 3: 0}
    events += [(TopicName.LIFECYCLE_SEED_TRANSITIONS.value, t) for t in grown]
    events += [(TopicName.SYSTEM_EVENTS_EPOCH.value, epoch_event(e, 0.4, transitions=n)) for e, n in counts.items()]
    chooser = FixedChooser(("mlp", "width"))
    run = fold_all(events)
    actions = decide_all(run, Decider(ScriptedPolicy(family="width"), "v", chooser))
    by_epoch = {a.decision.epoch: a for a in actions}
    # while the width seed lives, both its layers take no seed: nothing to grow
    assert all(by_epoch[e].command is None and "no germination possible" in by_epoch[e].decision.reason
               for e in (0, 1))
    # after the merge: body.2 (the dying units) reads 12 inputs now, and a width kernel of that shape is chosen
    command = by_epoch[2].command
    assert command is not None and command.layer_name == "body.2" and command.kernel_id == "kernel-width-12-8"
    assert chooser.asked[-1] == ([12], [8])


def test_width_and_depth_are_families_of_their_own():
    assert family_of(width_units([2], [8], 4).architecture) == "width"
    assert {family_of(bp.architecture) for bp in for_slot([2], [8])} >= {"width", "depth", "mlp", "mlp_wide"}
    assert FAMILIES[-2:] == ("width", "depth")


def capacity_run(gain: float, epochs: int = 5):
    """body.0 with the given capacity signal, body.2 reading none; accuracy flat at 0.5, units healthy."""
    events: list[tuple[str, object]] = [(TopicName.TRAINING_SESSIONS.value, session(epochs=20))]
    for epoch in range(epochs):
        for layer_id in (11, 22):
            for k in (0, 1):
                events.append((TopicName.TELEMETRY_SEED_HEALTH.value, HealthSignal(
                    layer_id=layer_id, seed_idx=k, epoch=epoch, activation_variance=0.5, dead_neuron_ratio=0.02,
                    avg_correlation=0.1, gradient_norm=0.3, health_score=0.95, total_seeds=2,
                    capacity_gain=gain if layer_id == 11 else 0.0)))
        events.append((TopicName.SYSTEM_EVENTS_EPOCH.value, epoch_event(epoch, 0.5)))
    return build_graph(fold_all(events), epochs - 1)


@pytest.mark.parametrize("gain, family", [(0.1, "width"), (0.0005, "mlp_wide")])
def test_the_teacher_widens_the_layer_whose_capacity_signal_is_high(gain, family):
    graph = capacity_run(gain)
    label = teacher(graph)
    assert label.adapt is (gain > 0.01) and FAMILIES[label.family] == family
    assert graph.layer_of_node[label.node] == "body.0"


def test_the_shipped_policy_chooses_width_where_the_teacher_does():
    policy, _ = load_policy()
    out = policy.decide(*(lambda g: (g.x, g.edge_index))(capacity_run(0.1)))
    assert float(out.adapt_probability) > 0.5 and FAMILIES[int(out.blueprint_probabilities.argmax())] == "width"


def test_karn_answers_a_fossilized_width_seed_with_blueprints_for_the_widened_slot():
    generator = Generator()
    for bp in for_slot([2], [8]):
        generator.know(bp)
    width = width_units([2], [8], 4)
    generator.know(width)
    report = FieldReport(layer_id=1, seed_idx=0, blueprint_id=width.blueprint_id, kernel_id="k", layer_name="body.0",
                         pre_metric=0.5, post_metric=0.6, outcome=FieldReportOutcome.FOSSILIZED)
    generator.record(report)
    fresh = generator.propose(report, "r")
    shapes = {(b.architecture.kind, b.architecture.input_shape[0], b.architecture.output_shape[0]) for b in fresh}
    assert shapes == {(None, 2, 12), ("width", 2, 12), ("depth", 12, 12)}
    assert generator.propose(report, "r") == []  # known now


def test_a_session_declaring_the_widened_shapes_gives_every_epoch_the_shapes_it_had():
    """A completed or failed run's session (Tamiyo keeps it; a replay folds it before deciding) is published
    after the merge: its shapes include it, and epochs before the merge still see the shapes they had."""
    log = moves(1, 0, "w4", (G, 0), (T, 0), (F, 1), (C, 2))
    widened = [MLP[0].model_copy(update={"output_shape": [12]}), MLP[1].model_copy(update={"input_shape": [12]})]
    for epoch, shapes in ((1, {1: ([2], [8]), 2: ([8], [6])}), (3, {1: ([2], [12]), 2: ([12], [6])})):
        assert derive(widened, EDGES, log, epoch, units, 3, merged=frozenset({(1, 0)})).shapes == shapes
        assert derive(MLP, EDGES, log, epoch, units, 3).shapes == shapes


def test_a_width_germination_on_its_way_takes_its_two_layers_before_its_transition_lands():
    """Tolaria applies a command at an epoch boundary; a fast run may complete the next epoch before it
    lands. Tamiyo must not grow another seed in the layers the width seed will take (Kasmina refuses it)."""
    events: list[tuple[str, object]] = [(TopicName.TRAINING_SESSIONS.value, session(epochs=8))]
    for epoch in (0, 1):
        for layer_id in (11, 22):
            for k in (0, 1):
                dead = 0.45 if layer_id == 11 else 0.05  # body.0 scores highest
                events.append((TopicName.TELEMETRY_SEED_HEALTH.value,
                               health(epoch, layer_id, k, score=1 - dead, dead=dead)))
        events.append((TopicName.SYSTEM_EVENTS_EPOCH.value, epoch_event(epoch, 0.4)))
    run = fold_all(events)
    chooser = FixedChooser(("mlp", "width"))
    [first] = [a for a in Decider(ScriptedPolicy(family="width"), "v", chooser).decide(run, 0) if a.command]
    assert first.command.layer_name == "body.0" and first.command.kernel_id.startswith("kernel-width-")
    record(run, first.decision)
    side_branches = Decider(ScriptedPolicy(family="mlp"), "v", chooser)
    second = side_branches.decide(run, 1)  # no transition of the width seed on the log yet
    assert [a.command for a in second] == [None] and "no germination possible" in second[0].decision.reason
    run.issued.clear()  # the same epoch without the command on its way: a side branch would be grown
    assert any(a.command is not None for a in side_branches.decide(run, 1))
