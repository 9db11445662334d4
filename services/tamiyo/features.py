"""The model graph Tamiyo's policy reads: nodes, typed features, data-flow edges.

Nodes: one per seeded host layer, then one per seed slot. Edges (source -> target):
layer -> next layer (the run's declared topology), layer -> each of its seeds and
seed -> its layer (a seed's output joins its layer's). Every node has the same
``FEATURES`` vector; run-wide context (accuracy trend, budget) is repeated on each node.

Shapes: ``x`` (N, len(FEATURES)) float32, ``edge_index`` (2, E) int64.
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
    layer_names: list[str]
    seeds: list[SeedNode]
    layer_of_node: list[str]
    can_germinate: bool

    def features_of(self, node: int) -> dict[str, float]:
        row = self.x[node].tolist()
        return {name: round(row[i], 6) for i, name in enumerate(FEATURES)}


def slope(values: list[float]) -> float:
    """Least-squares slope per step of the last values (0 for fewer than two)."""
    n = len(values)
    if n < 2:
        return 0.0
    mean_x, mean_y = (n - 1) / 2, sum(values) / n
    num = sum((i - mean_x) * (v - mean_y) for i, v in enumerate(values))
    den = sum((i - mean_x) ** 2 for i in range(n))
    return num / den


def _health_features(history: list[HealthSignal]) -> list[float]:
    if not history:
        return [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    h = history[-1]
    recent = history[-3:]  # the trends look at the last three signals
    return [
        h.health_score, math.log1p(h.activation_variance), h.dead_neuron_ratio, h.avg_correlation,
        math.log1p(h.gradient_norm), math.log1p(h.execution_latency), 1.0 if h.error_count else 0.0,
        slope([s.health_score for s in recent]), slope([s.dead_neuron_ratio for s in recent]),
    ]


def germination_allowed(run: RunState, epoch: int) -> tuple[bool, float]:
    """(budget and cooldown allow a germination now, fraction of the budget left)."""
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
    spec = run.session.training_config
    allowed, budget_left = germination_allowed(run, epoch)
    accuracies = [e.validation_accuracy for e in history[-4:]]
    active = 0
    context = [
        current.validation_accuracy, slope(accuracies), min(len(history), 10) / 10,
        current.train_accuracy - current.validation_accuracy,
        math.log1p(current.state.validation_loss), budget_left, 1.0 if allowed else 0.0,
        (epoch + 1) / max(1, spec.epochs),
    ]

    conv = {layer.layer_id: 1.0 if layer.kind == "conv2d" else 0.0 for layer in layers}
    seed_nodes: list[SeedNode] = []
    seed_rows: list[list[float]] = []
    by_layer: dict[int, list[list[float]]] = {}
    states = run.seed_states(epoch)
    for i, (layer_id, seed_idx, layer_name) in enumerate(seeds):
        state, since = states.get((layer_id, seed_idx), (SeedState.DORMANT, 0))
        health = run.health_until(layer_id, seed_idx, epoch)
        ready = bool(health and health[-1].epoch == epoch and health[-1].is_ready_for_transition)
        errors = health[-1].error_count if health else 0
        active += state in (SeedState.GERMINATED, SeedState.TRAINING, SeedState.GRAFTING)
        row = [0.0, 1.0, conv.get(layer_id, 0.0), *_health_features(health), *(1.0 if state is s else 0.0 for s in STATES),
               min(epoch - since, 20) / 10, 1.0 if ready else 0.0]
        seed_rows.append(row)
        by_layer.setdefault(layer_id, []).append(row)
        seed_nodes.append(SeedNode(len(layers) + i, layer_id, seed_idx, layer_name, state, since, ready, errors))

    active_fraction = active / max(1, len(seeds))
    rows: list[list[float]] = []
    for depth, layer in enumerate(layers):
        mine = by_layer.get(layer.layer_id) or [[0.0, 1.0, 0.0, *_health_features([]), 1.0] + [0.0] * (len(STATES) + 1)]
        mean = [sum(col) / len(mine) for col in zip(*mine)]
        mean[0], mean[1], mean[2] = 1.0, 0.0, conv[layer.layer_id]
        rows.append(mean + context + [active_fraction, depth / max(1, len(layers) - 1)])
    layer_depth = {layer.layer_id: d for d, layer in enumerate(layers)}
    for node, row in zip(seed_nodes, seed_rows):
        rows.append(row + context + [active_fraction, layer_depth.get(node.layer_id, 0) / max(1, len(layers) - 1)])

    index = {layer.name: i for i, layer in enumerate(layers)}
    sources, targets = [], []
    for edge in run.topology():
        if edge.source in index and edge.target in index:
            sources.append(index[edge.source])
            targets.append(index[edge.target])
    by_id = {layer.layer_id: i for i, layer in enumerate(layers)}
    for node in seed_nodes:
        layer_node = by_id.get(node.layer_id)
        if layer_node is not None:
            sources += [layer_node, node.node]
            targets += [node.node, layer_node]
    x = torch.tensor(rows, dtype=torch.float32)
    edge_index = torch.tensor([sources, targets], dtype=torch.long).view(2, -1)
    return GraphView(epoch, x, edge_index, [layer.name for layer in layers], seed_nodes,
                     [layer.name for layer in layers] + [n.layer_name for n in seed_nodes], allowed)
