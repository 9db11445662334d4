"""Tamiyo's array-backed state and latency-shaped policy decide exactly as the per-seed Python they replaced.

The reference below is the previous implementation, kept here only: health signals as per-seed
sorted lists, the graph built seed by seed, the policy's message passing through generic scatter
means and maxes (degrees counted on every call). Randomized runs (signals missing, late and out of
order, transitions, non-finite values, seeds on undeclared layers) are folded into both; the
feature matrices, edges, seed nodes, policy outputs and the decisions must agree.
"""

from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass
from itertools import pairwise
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from contracts import (
    EpochCompleted,
    HealthSignal,
    LayerEdge,
    LayerSpec,
    ModelSpec,
    Seed,
    SeedState,
    SystemStatePacket,
    TopicName,
    TrainingSession,
    TrainingSessionEvent,
    TrainingSpec,
)
from services.tamiyo.decider import FAMILIES, Decider, record
from services.tamiyo.features import (
    STATES,
    GraphView,
    SeedNode,
    _health_features,
    _log1p,
    build_graph,
    germination_allowed,
    slope,
)
from services.tamiyo.health_table import HEALTH_FIELDS, HealthTable
from services.tamiyo.policy import PolicyOutput, TamiyoPolicy
from services.tamiyo.policy_store import load_policy
from services.tamiyo.run_state import RejectedEvent, RunState
from services.tamiyo.scatter import available_backends
from services.tamiyo.service import fold
from tests.tamiyo_events import FixedChooser, transition
from tests.tamiyo_reference_decider import ReferenceDecider

HEALTH, EPOCHS, SESSIONS, TRANSITIONS = (TopicName.TELEMETRY_SEED_HEALTH.value, TopicName.SYSTEM_EVENTS_EPOCH.value,
                                         TopicName.TRAINING_SESSIONS.value, TopicName.LIFECYCLE_SEED_TRANSITIONS.value)


# -- the reference: the previous implementation ------------------------------------------------------------
class ReferenceHealth:
    """Per seed: its signals' epochs (sorted) and the signals in the same order."""

    def __init__(self) -> None:
        self.health: dict[tuple[int, int], tuple[list[int], list[HealthSignal]]] = {}

    def add(self, signal: HealthSignal) -> None:
        epochs, signals = self.health.setdefault((signal.layer_id, signal.seed_idx), ([], []))
        at = bisect.bisect_left(epochs, signal.epoch)
        epochs.insert(at, signal.epoch)
        signals.insert(at, signal)

    def until(self, layer_id: int, seed_idx: int, epoch: int, last: int = 3) -> list[HealthSignal]:
        epochs, signals = self.health.get((layer_id, seed_idx), ((), ()))
        end = bisect.bisect_right(epochs, epoch)
        return list(signals[max(0, end - last):end])


@dataclass
class ReferenceGraph:
    """The graph as the per-seed version built it: its seeds a list of ``SeedNode``."""

    epoch: int
    x: torch.Tensor
    edge_index: torch.Tensor
    seeds: list[SeedNode]
    layer_of_node: list[str]
    can_germinate: bool
    features_of = GraphView.features_of
    non_finite = GraphView.non_finite


def reference_graph(run: RunState, health: ReferenceHealth, epoch: int) -> ReferenceGraph:
    layers = run.layers()
    seeds = run.seeds()
    history = run.epochs_until(epoch)
    current = history[-1]
    spec = run.session.training_config
    allowed, budget_left = germination_allowed(run, epoch)
    accuracies = [e.validation_accuracy for e in history[-4:]]
    position = {layer.layer_id: i for i, layer in enumerate(layers)}
    conv = [1.0 if layer.kind == "conv2d" else 0.0 for layer in layers]
    depth = [i / max(1, len(layers) - 1) for i in range(len(layers))]
    states = run.seed_states(epoch)
    seed_nodes, seed_rows, seed_layer = [], [], []
    for i, (layer_id, seed_idx, layer_name) in enumerate(seeds):
        state, since = states.get((layer_id, seed_idx), (SeedState.DORMANT, 0))
        signals = health.until(layer_id, seed_idx, epoch)
        ready = bool(signals and signals[-1].epoch == epoch and signals[-1].is_ready_for_transition)
        errors = signals[-1].error_count if signals else 0
        at = position.get(layer_id, 0)
        seed_rows.append([0.0, 1.0, conv[at] if layers else 0.0, *_health_features(signals),
                          *(1.0 if state is s else 0.0 for s in STATES), min(epoch - since, 20) / 10,
                          1.0 if ready else 0.0])
        seed_layer.append(at)
        seed_nodes.append(SeedNode(len(layers) + i, layer_id, seed_idx, layer_name, state, since, ready, errors))
    width = 3 + 10 + len(STATES) + 2
    seed_x = torch.tensor(seed_rows, dtype=torch.float32).view(-1, width)
    index = torch.tensor(seed_layer, dtype=torch.long)
    counts = torch.zeros(len(layers)).index_add_(0, index, torch.ones(len(seed_layer)))
    layer_x = torch.zeros(len(layers), width).index_add_(0, index, seed_x) / counts.clamp_min(1).unsqueeze(1)
    empty = counts == 0
    if bool(empty.any()):
        layer_x[empty] = torch.tensor(
            [0.0, 0.0, 0.0, *_health_features([]), *(1.0 if s is SeedState.DORMANT else 0.0 for s in STATES), 0.0, 0.0])
    layer_x[:, 0], layer_x[:, 1], layer_x[:, 2] = 1.0, 0.0, torch.tensor(conv)
    active = sum(1 for n in seed_nodes if n.state in (SeedState.GERMINATED, SeedState.TRAINING, SeedState.GRAFTING))
    context = torch.tensor([
        current.validation_accuracy, slope(accuracies), min(len(history), 10) / 10,
        current.train_accuracy - current.validation_accuracy, _log1p(current.state.validation_loss),
        budget_left, 1.0 if allowed else 0.0, (epoch + 1) / max(1, spec.epochs), active / max(1, len(seeds)),
    ])
    node_depth = torch.tensor(depth + [depth[at] for at in seed_layer] if layers else [0.0] * len(seeds))
    nodes = torch.cat([layer_x, seed_x])
    x = torch.cat([nodes, context.expand(nodes.shape[0], -1), node_depth.unsqueeze(1)], dim=1)
    by_name = {layer.name: i for i, layer in enumerate(layers)}
    sources, targets = [], []
    for edge in run.topology():
        if edge.source in by_name and edge.target in by_name:
            sources.append(by_name[edge.source])
            targets.append(by_name[edge.target])
    for node in seed_nodes:
        layer_node = position.get(node.layer_id)
        if layer_node is not None:
            sources += [layer_node, node.node]
            targets += [node.node, layer_node]
    edge_index = torch.tensor([sources, targets], dtype=torch.long).view(2, -1)
    node_layers = [layer.name for layer in layers] + [n.layer_name for n in seed_nodes]
    return ReferenceGraph(epoch, x, edge_index, seed_nodes, node_layers, allowed)


class ReferencePolicy:
    """The previous forward of the same weights: generic scatter mean/max per layer, scatter readout."""

    def __init__(self, policy: TamiyoPolicy) -> None:
        self.policy = policy

    def _forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> PolicyOutput:
        p, scatter = self.policy, self.policy.scatter
        h = p.encoder(x)
        for layer in p.layers:
            source, target = edge_index
            messages = torch.relu(layer.message(h)).index_select(0, source)
            n = h.shape[0]
            aggregated = torch.cat([scatter.mean(messages, target, n), scatter.max(messages, target, n)], dim=1)
            h = layer.norm(h + torch.relu(layer.update(torch.cat([h, aggregated], dim=1))))
        graph = torch.zeros(h.shape[0], dtype=torch.long)
        readout = torch.cat([scatter.mean(h, graph, 1), scatter.max(h, graph, 1)], dim=1)[0]
        return PolicyOutput(
            adapt_probability=torch.sigmoid(p.adapt_head(readout))[0], node_scores=p.node_head(h).squeeze(1),
            blueprint_probabilities=torch.softmax(p.blueprint_head(readout), dim=0),
            urgency=torch.sigmoid(p.urgency_head(readout))[0], value=p.value_head(readout)[0])

    def decide(self, x: torch.Tensor, edge_index: torch.Tensor) -> PolicyOutput:
        self.policy.eval()
        with torch.inference_mode():
            return self._forward(x, edge_index)


# -- randomized runs -----------------------------------------------------------------------------------------
def random_run(rng: random.Random, epochs: int) -> list[tuple[str, object]]:
    """A run's events in an arrival order Tamiyo can meet: each topic in order, topics interleaved; some slots
    skip epochs, some report non-finite or unusual values, seeds move through their lifecycle."""
    count = rng.randint(1, 12)
    layers = [LayerSpec(name=f"body.{i}", layer_id=100 + i, kind=rng.choice(["linear", "conv2d"]),
                        input_shape=[8], output_shape=[8]) for i in range(count)]
    topology = [LayerEdge(source=a.name, target=b.name) for a, b in pairwise(layers)]
    topology += [LayerEdge(source=layers[i].name, target=layers[j].name)
                 for i in range(count) for j in range(i + 2, count) if rng.random() < 0.2]
    seeds = [Seed(layer_id=layer.layer_id, seed_idx=k, layer_name=layer.name)
             for layer in layers for k in range(rng.randint(0, 3))]
    if rng.random() < 0.3:  # a slot on a layer the session does not declare
        seeds.append(Seed(layer_id=999, seed_idx=0, layer_name="ghost"))
    rng.shuffle(seeds)
    session = TrainingSessionEvent(session=TrainingSession(
        session_id="run-1", name="r", description="randomized",
        training_model_config=ModelSpec(architecture="mlp", input_shape=[8], num_classes=3,
                                        layers=[] if rng.random() < 0.1 else layers, topology=topology),
        training_config=TrainingSpec(dataset="spirals", epochs=epochs, batch_size=32, learning_rate=1e-3,
                                     adaptation_budget=rng.randint(0, 8), cooldown_epochs=rng.randint(0, 2),
                                     auto_advance=rng.random() < 0.3),
        seeds=seeds))
    by_topic: dict[str, list] = {SESSIONS: [session], HEALTH: [], EPOCHS: [], TRANSITIONS: []}
    states = {(s.layer_id, s.seed_idx): SeedState.DORMANT for s in seeds}
    lifecycle = [SeedState.DORMANT, SeedState.GERMINATED, SeedState.TRAINING, SeedState.GRAFTING,
                 SeedState.FOSSILIZED]
    for epoch in range(epochs):
        signals = transitions = 0
        for s in seeds:
            if rng.random() < 0.15:
                continue  # this slot does not report this epoch
            values = dict(activation_variance=rng.uniform(0, 2), dead_neuron_ratio=rng.random(),
                          avg_correlation=rng.uniform(-1, 1), gradient_norm=rng.uniform(0, 3),
                          capacity_gain=rng.choice([0.0, rng.uniform(0, 0.3)]),
                          health_score=rng.random(), execution_latency=rng.uniform(0, 5),
                          error_count=rng.choice([0] * 12 + [1, 7]), is_ready_for_transition=rng.random() < 0.3)
            signal = HealthSignal(layer_id=s.layer_id, seed_idx=s.seed_idx, epoch=epoch, **values)
            if rng.random() < 0.03:  # bytes on the log may hold what validation would refuse
                signal = signal.model_copy(update={rng.choice(["activation_variance", "gradient_norm",
                                                               "execution_latency", "health_score",
                                                               "capacity_gain"]):
                                                   rng.choice([math.inf, math.nan, -3.0, 1e300])})
            by_topic[HEALTH].append(signal)
            signals += 1
        for slot, state in states.items():
            at = lifecycle.index(state) if state in lifecycle else len(lifecycle) - 1
            if at + 1 < len(lifecycle) and rng.random() < (0.02 if at == 0 else 0.3):
                nxt = lifecycle[at + 1] if rng.random() < 0.9 else SeedState.CULLED
                by_topic[TRANSITIONS].append(transition(epoch, *slot, state, nxt, f"cmd-{epoch}-{slot}"))
                states[slot] = nxt
                transitions += 1
        accuracy = 0.3 + 0.5 * rng.random()
        by_topic[EPOCHS].append(EpochCompleted(
            state=SystemStatePacket(epoch=epoch, total_seeds=len(seeds), active_seeds=0,
                                    training_loss=1 - accuracy, validation_loss=rng.choice([1 - accuracy, 0.0, 3.0]),
                                    system_load=0.1, memory_usage=0.1),
            train_accuracy=min(1.0, accuracy + 0.05), validation_accuracy=accuracy, epoch_seconds=1.0,
            parameter_count=1000, health_signals=signals, seed_transitions=transitions))
    queues = [[(topic, e) for e in events] for topic, events in by_topic.items()]
    order = []
    while any(queues):
        queue = rng.choice([q for q in queues if q])
        order.append(queue.pop(0))
    return order


def assert_same_graph(got: GraphView, want: ReferenceGraph) -> None:
    assert got.epoch == want.epoch and got.can_germinate == want.can_germinate
    torch.testing.assert_close(got.x, want.x, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(got.edge_index, want.edge_index)
    assert got.seeds == want.seeds and got.layer_of_node == want.layer_of_node
    assert got.non_finite() == want.non_finite()


@pytest.mark.parametrize("seed", range(12))
def test_features_match_the_per_seed_reference_at_every_epoch_as_events_arrive(seed):
    rng = random.Random(seed)
    run, health = RunState("run-1"), ReferenceHealth()
    compared = 0
    for topic, payload in random_run(rng, epochs=rng.randint(1, 8)):
        fold(run, topic, payload)
        if topic == HEALTH:
            health.add(payload)
        if run.session is None or rng.random() < 0.7:
            continue
        # Any epoch whose EpochCompleted is here, complete or not: later signals may already be folded.
        for epoch in sorted(run.epochs):
            if all(k in run.epochs for k in range(epoch)):
                assert_same_graph(build_graph(run, epoch), reference_graph(run, health, epoch))
                compared += 1
    for epoch in sorted(run.epochs):
        assert_same_graph(build_graph(run, epoch), reference_graph(run, health, epoch))
    assert compared or not run.epochs or run.session is None


def test_a_second_signal_for_an_epoch_is_still_rejected_after_the_table_was_read():
    rng = random.Random(5)
    run = RunState("run-1")
    events = random_run(rng, epochs=3)
    for topic, payload in events:
        fold(run, topic, payload)
    first = next(p for t, p in events if t == HEALTH)
    build_graph(run, max(run.epochs))  # staged signals written to the arrays
    with pytest.raises(RejectedEvent, match="second health signal"):
        run.apply_health(first)
    late = first.model_copy(update={"epoch": 50})
    run.apply_health(late)  # staged, not read yet
    with pytest.raises(RejectedEvent, match="second health signal"):
        run.apply_health(late)


@pytest.mark.parametrize("backend", available_backends(), ids=lambda b: b.name)
def test_the_policy_gives_the_reference_outputs_on_random_graphs(backend):
    policy, _ = load_policy()
    policy.scatter = backend
    reference = ReferencePolicy(policy)
    generator = torch.Generator().manual_seed(0)
    for nodes, edges in ((1, 0), (7, 0), (12, 30), (300, 1200)):
        x = torch.randn(nodes, policy.encoder[0].in_features, generator=generator)
        edge_index = torch.randint(0, nodes, (2, edges), generator=generator)
        got, want = policy.decide(x, edge_index), reference.decide(x, edge_index)
        for name in ("adapt_probability", "node_scores", "blueprint_probabilities", "urgency", "value"):
            # float32 sums in another order (fused products): a wrong weight would be off by far more
            torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-4, atol=1e-5)


def _decisions(events, policy, reference: bool) -> list[dict]:
    """Every decision of the run as the service makes them (deciding as epochs complete): by the per-seed
    reference (its graph builder and its decider) when ``reference``, else by today's."""
    run, health = RunState("run-1"), ReferenceHealth()
    decider: Decider | ReferenceDecider = Decider(policy, "v", FixedChooser())
    if reference:
        decider = ReferenceDecider(policy, "v", FixedChooser(), graph_of=lambda r, e: reference_graph(r, health, e))
    out = []
    for topic, payload in events:
        fold(run, topic, payload)
        if topic == HEALTH:
            health.add(payload)
        if run.session is None:
            continue
        for epoch in run.ready_epochs():
            for action in decider.decide(run, epoch):
                record(run, action.decision)
                out.append(_plain(action))
    return out


def _plain(action) -> dict:
    command = action.command.model_dump(exclude={"timestamp"}) if action.command else None
    return action.decision.model_dump(exclude={"timestamp"}) | {"command": command}


@pytest.mark.parametrize("seed", range(10))
def test_decisions_match_the_reference_on_randomized_runs(seed):
    policy, _ = load_policy()
    events = random_run(random.Random(100 + seed), epochs=6)
    want = _decisions(events, ReferencePolicy(policy), reference=True)
    got = _decisions(events, policy, reference=False)
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        for key in ("confidence", "urgency"):
            assert g.pop(key) == pytest.approx(w.pop(key), abs=1e-6)
        gf, wf = g.pop("features"), w.pop("features")
        assert gf.keys() == wf.keys() and all(gf[k] == pytest.approx(wf[k], rel=1e-5, abs=1e-5) for k in gf)
        assert g == w


def test_a_graph_decided_on_can_then_be_trained_on():
    # The policy keeps what it derives from an edge_index; met first under inference_mode, it must still
    # serve a forward that autograd records (the teacher and the trainer reuse their graphs).
    policy, _ = load_policy()
    x = torch.randn(40, policy.encoder[0].in_features, generator=torch.Generator().manual_seed(1))
    edge_index = torch.randint(0, 40, (2, 120), generator=torch.Generator().manual_seed(2))
    decided = policy.decide(x, edge_index).node_scores
    policy.train()
    trained = policy(x, edge_index).node_scores
    trained.sum().backward()
    assert policy.node_head.weight.grad is not None
    torch.testing.assert_close(trained.detach(), decided, rtol=1e-5, atol=1e-6)


def test_the_health_table_answers_the_last_signals_per_slot_as_of_an_epoch():
    table = HealthTable()

    def signal(value: float) -> SimpleNamespace:
        return SimpleNamespace(**dict.fromkeys(HEALTH_FIELDS, value))
    assert table.add(0, 0, signal(0.1)) and table.add(0, 2, signal(0.3))
    table.latest(np.array([0]), 2)  # block 2 written with one row
    assert table.add(5, 2, signal(0.5))  # a slot seen later: the block grows
    assert not table.add(5, 2, signal(0.9)) and not table.add(0, 2, signal(0.9))  # staged / written twice
    assert table.add(0, 3, signal(0.4)) and table.add(0, 5, signal(0.6))
    values, epochs, count = table.latest(np.array([0, 5, 7]), 4)
    assert count.tolist() == [3, 1, 0]
    assert epochs.tolist() == [[3, 2, 0], [2, -1, -1], [-1, -1, -1]]
    assert values[0, :, 0].tolist() == [0.4, 0.3, 0.1] and values[1, 0, 0] == 0.5 and not values[2].any()
    assert table.latest(np.array([0]), 1)[1].tolist() == [[0, -1, -1]]  # the epoch-5 signal is not seen at 1


class TiedPolicy:
    """Outputs drawn from few values (ties between slots and between families, signed zeros, sometimes a
    non-finite one, the adapt probability around the threshold), a function of the features alone, so that
    both deciders meet the same outputs on the same graph."""

    def decide(self, x: torch.Tensor, edge_index: torch.Tensor) -> PolicyOutput:
        rng = random.Random(x.numpy().tobytes())
        bad = [math.nan] if rng.random() < 0.08 else []
        scores = [rng.choice([0.0, -0.0, 0.5, 1.0, -2.0, 1e-8, *bad]) for _ in range(x.shape[0])]
        families = rng.choice([len(FAMILIES), len(FAMILIES), 4, 8])
        probabilities = [rng.choice([0.1, 0.3, 0.3, 0.0, *bad]) for _ in range(families)]
        return PolicyOutput(adapt_probability=torch.tensor(rng.choice([0.2, 0.5, 0.4999, 0.9, 1.0, *bad])),
                            node_scores=torch.tensor(scores), blueprint_probabilities=torch.tensor(probabilities),
                            urgency=torch.tensor(rng.choice([0.0, 0.7, 1.5, *bad])), value=torch.tensor(0.0))


@pytest.mark.parametrize("seed", range(60))
def test_the_decider_chooses_as_the_per_seed_reference_on_the_same_graphs(seed):
    # The decider alone: both read today's graph; the reference loops over its SeedNode list.
    rng = random.Random(1000 + seed)
    events = random_run(rng, epochs=rng.randint(1, 12))
    policy = TiedPolicy() if seed % 2 else load_policy()[0]
    families = tuple(rng.sample(FAMILIES, rng.randint(0, len(FAMILIES))))
    runs = {"new": RunState("run-1"), "reference": RunState("run-1")}
    deciders = {"new": Decider(policy, "v", FixedChooser(families)),
                "reference": ReferenceDecider(policy, "v", FixedChooser(families))}
    decided = {"new": [], "reference": []}
    for topic, payload in events:
        for name, run in runs.items():
            fold(run, topic, payload)
            if run.session is None:
                continue
            for epoch in run.ready_epochs():
                for action in deciders[name].decide(run, epoch):
                    record(run, action.decision)
                    decided[name].append(_plain(action))
    assert decided["new"] == decided["reference"]
    assert decided["new"]


def test_the_weights_kept_for_inference_follow_the_parameters():
    # The arranged weights are kept between decisions; a parameter written in place (an optimizer step,
    # load_state_dict) must be seen by the next decision.
    policy, _ = load_policy()
    reference = ReferencePolicy(policy)
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(30, policy.encoder[0].in_features, generator=generator)
    edge_index = torch.randint(0, 30, (2, 90), generator=generator)

    def assert_as_reference() -> None:
        got, want = policy.decide(x, edge_index), reference.decide(x, edge_index)
        for name in ("adapt_probability", "node_scores", "blueprint_probabilities", "urgency", "value"):
            # float32 sums in another order (fused products): a wrong weight would be off by far more
            torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-4, atol=1e-5)

    assert_as_reference()
    before = policy.decide(x, edge_index).node_scores
    with torch.no_grad():
        policy.layers[1].update.weight.mul_(0.5)
        policy.adapt_head.bias.add_(1.0)
    assert not torch.equal(policy.decide(x, edge_index).node_scores, before)
    assert_as_reference()
    policy.load_state_dict(TamiyoPolicy(policy.encoder[0].in_features, hidden=policy.hidden,
                                        blueprints=policy.blueprints).state_dict())
    assert_as_reference()
