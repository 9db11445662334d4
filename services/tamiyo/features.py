"""The model graph Tamiyo's policy reads: nodes, typed features, data-flow edges.

Nodes: one per seeded host layer, then one per seed slot. Edges (source -> target):
layer -> next layer (the run's declared topology), layer -> each of its seeds and
seed -> its layer (a seed's output joins its layer's). Every node has the same
``FEATURES`` vector; run-wide context (accuracy trend, budget) is repeated on each node.

Shapes: ``x`` (N, len(FEATURES)) float32, ``edge_index`` (2, E) int64.

Building the graph never raises on what a valid session allows (no seeds, seeds on layers the
session does not declare); a value that cannot be a feature (infinite, NaN, negative under a
logarithm, beyond float32) becomes a non-finite entry, which ``GraphView.non_finite`` names so
that the decider can refuse to ask the policy (fail closed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from contracts import HealthSignal, SeedState
from services.tamiyo.run_state import RunState

STATES = tuple(SeedState)
FEATURES: tuple[str, ...] = (
    "is_layer", "is_seed", "is_conv",
    "health_score", "log_activation_variance", "dead_neuron_ratio", "avg_correlation", "log_gradient_norm",
    "log_latency_ms", "has_errors", "health_trend", "dead_trend",
    *(f"state_{s.value}" for s in STATES),
    "epochs_in_state", "ready",
    "validation_accuracy", "accuracy_trend", "epochs_seen", "train_val_gap", "log_validation_loss",
    "budget_left", "can_germinate", "progress", "active_fraction", "depth",
)
INDEX = {name: i for i, name in enumerate(FEATURES)}


@dataclass(frozen=True)
class SeedNode:
    node: int
    layer_id: int
    seed_idx: int
    layer_name: str
    state: SeedState
    since: int
    ready: bool
    errors: int


@dataclass
class GraphView:
    epoch: int
    x: torch.Tensor
    edge_index: torch.Tensor
    seeds: list[SeedNode]
    layer_of_node: list[str]
    can_germinate: bool

    def features_of(self, node: int) -> dict[str, float]:
        """The node's features, rounded; non-finite ones left out (a decision record carries finite
        numbers only; the decision's reason names them). Empty for a graph without that node."""
        if not 0 <= node < self.x.shape[0]:
            return {}
        row = self.x[node].tolist()
        return {name: round(row[i], 6) for i, name in enumerate(FEATURES) if math.isfinite(row[i])}

    def non_finite(self) -> list[str]:
        """Names of the features that are infinite or NaN on some node."""
        bad = (~torch.isfinite(self.x)).any(dim=0).tolist() if self.x.numel() else []
        return [name for name, b in zip(FEATURES, bad, strict=True) if b]


def slope(values: list[float]) -> float:
    """Least-squares slope per step of the last values (0 for fewer than two)."""
    n = len(values)
    if n < 2:
        return 0.0
    if n == 2:
        return values[1] - values[0]
    if n == 3:
        return (values[2] - values[0]) / 2
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    num = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values))
    den = sum((i - mean_x) ** 2 for i in range(n))
    return num / den


def _log1p(value: float) -> float:
    """log(1 + value) for the non-negative quantities; NaN (a non-finite feature) for anything else,
    where ``math.log1p`` would raise or lie."""
    return math.log1p(value) if value >= 0 else math.nan


def _health_features(history: list[HealthSignal]) -> list[float]:
    if not history:
        return [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    h = history[-1]
    recent = history[-3:]  # the trends look at the last three signals
    return [
        h.health_score, _log1p(h.activation_variance), h.dead_neuron_ratio, h.avg_correlation,
        _log1p(h.gradient_norm), _log1p(h.execution_latency), 1.0 if h.error_count else 0.0,
        slope([s.health_score for s in recent]), slope([s.dead_neuron_ratio for s in recent]),
    ]


def germination_allowed(run: RunState, epoch: int) -> tuple[bool, float]:
    """(budget and cooldown allow a germination now, fraction of the budget left)."""
    assert run.session is not None  # the graph is built for runs that have a session
    spec = run.session.training_config
    if not spec.adaptation_enabled or spec.adaptation_budget <= 0:
        return False, 0.0
    done = run.germinations(epoch)
    left = max(0, spec.adaptation_budget - len(done)) / spec.adaptation_budget
    cooled = not done or epoch + 1 - done[-1] >= spec.cooldown_epochs
    return left > 0 and cooled, left


def build_graph(run: RunState, epoch: int) -> GraphView:
    """The graph of ``run`` as of the end of ``epoch`` (only events of epochs <= ``epoch``)."""
    layers = run.layers()
    seeds = run.seeds()
    history = run.epochs_until(epoch)
    current = history[-1]
    assert run.session is not None
    spec = run.session.training_config
    allowed, budget_left = germination_allowed(run, epoch)
    accuracies = [e.validation_accuracy for e in history[-4:]]
    position = {layer.layer_id: i for i, layer in enumerate(layers)}
    conv = [1.0 if layer.kind == "conv2d" else 0.0 for layer in layers]
    depth = [i / max(1, len(layers) - 1) for i in range(len(layers))]

    # Seed rows: everything up to "ready"; the run-wide context is appended to every node below.
    states = run.seed_states(epoch)
    seed_nodes: list[SeedNode] = []
    seed_rows: list[list[float]] = []
    seed_layer: list[int] = []
    for i, (layer_id, seed_idx, layer_name) in enumerate(seeds):
        state, since = states.get((layer_id, seed_idx), (SeedState.DORMANT, 0))
        health = run.health_until(layer_id, seed_idx, epoch)
        ready = bool(health and health[-1].epoch == epoch and health[-1].is_ready_for_transition)
        errors = health[-1].error_count if health else 0
        at = position.get(layer_id, 0)
        seed_rows.append([0.0, 1.0, conv[at] if layers else 0.0, *_health_features(health),
                          *(1.0 if state is s else 0.0 for s in STATES), min(epoch - since, 20) / 10,
                          1.0 if ready else 0.0])
        seed_layer.append(at)
        seed_nodes.append(SeedNode(len(layers) + i, layer_id, seed_idx, layer_name, state, since, ready, errors))
    width = 3 + 9 + len(STATES) + 2
    seed_x = torch.tensor(seed_rows, dtype=torch.float32).view(-1, width)

    # Layer rows: the mean of their seeds' rows (a layer without seeds looks healthy and dormant).
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
    return GraphView(epoch, x, edge_index, seed_nodes, node_layers, allowed)
