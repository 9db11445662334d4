"""The model graph Tamiyo's policy reads: nodes, typed features, data-flow edges.

Nodes: one per seeded host layer, then one per seed slot. Edges (source -> target):
layer -> next layer (the run's declared topology), layer -> each of its seeds and
seed -> its layer (a seed's output joins its layer's). Every node has the same
``FEATURES`` vector; run-wide context (accuracy trend, budget) is repeated on each node.

Shapes: ``x`` (N, len(FEATURES)) float32, ``edge_index`` (2, E) int64.

Built as array work, no loop over seeds: what the session fixes (node order, static features,
``edge_index``) is built once per session and kept in ``RunState.views``; the seed rows come from
the run's health table (``health_table``: every slot's last three signals at once) and its seed
states, in float64, cast to float32 once, exactly the values the per-seed version computed (a
test keeps that version as its reference). The seeds reach the decider as arrays too (state, entry
epoch, readiness, errors: one entry per slot), not as one object per seed. The same ``edge_index``
tensor is handed out at every epoch, which lets the policy keep what it derives from it.

Building the graph never raises on what a valid session allows (no seeds, seeds on layers the
session does not declare); a value that cannot be a feature (infinite, NaN, negative under a
logarithm, beyond float32) becomes a non-finite entry, which ``GraphView.non_finite`` names so
that the decider can refuse to ask the policy (fail closed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from contracts import HealthSignal, LayerSpec, SeedState
from services.tamiyo.health_table import COLUMN
from services.tamiyo.run_state import RunState

STATES = tuple(SeedState)
FEATURES: tuple[str, ...] = (
    "is_layer", "is_seed", "is_conv",
    "health_score", "log_activation_variance", "dead_neuron_ratio", "avg_correlation", "log_gradient_norm",
    "log_latency_ms", "has_errors", "health_trend", "dead_trend", "log_capacity_gain",
    *(f"state_{s.value}" for s in STATES),
    "epochs_in_state", "ready",
    "validation_accuracy", "accuracy_trend", "epochs_seen", "train_val_gap", "log_validation_loss",
    "budget_left", "can_germinate", "progress", "active_fraction", "depth",
)
INDEX = {name: i for i, name in enumerate(FEATURES)}
_STATE_INDEX = {state: i for i, state in enumerate(STATES)}
_ACTIVE = np.array([s in (SeedState.GERMINATED, SeedState.TRAINING, SeedState.GRAFTING) for s in STATES])


class SeedNode(NamedTuple):
    """A seed slot's node and what the decider reads of it (a named tuple: built for every slot at every
    decision, it must be cheap to make)."""

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
    """The graph at one epoch. The seed slots are arrays (``topology`` holds what the session fixes, the
    ``seed_*`` arrays what the epoch says, one entry per slot in session order; slot ``i`` is node
    ``topology.layer_count + i``), so that deciding reads every seed at once; ``seeds`` builds the
    ``SeedNode`` list for the readers that want one (the teacher, training, tests), off the decision path."""

    epoch: int
    x: torch.Tensor
    edge_index: torch.Tensor
    topology: Topology
    seed_state: np.ndarray  # (S,) int64: index in STATES
    seed_since: np.ndarray  # (S,) int64: the epoch the seed entered that state
    seed_ready: np.ndarray  # (S,) bool: its signal of this epoch says it is ready for its next stage
    seed_errors: np.ndarray  # (S,) int64: kernel errors its latest signal reports
    layer_of_node: list[str]
    can_germinate: bool

    def seed(self, i: int) -> SeedNode:
        """The ``i``-th seed slot's node."""
        t = self.topology
        return SeedNode(t.layer_count + i, t.slot_layer_ids[i], t.slot_seed_idxs[i], t.slot_layer_names[i],
                        STATES[int(self.seed_state[i])], int(self.seed_since[i]), bool(self.seed_ready[i]),
                        int(self.seed_errors[i]))

    @property
    def seeds(self) -> list[SeedNode]:
        return [self.seed(i) for i in range(len(self.topology.slots))]

    def features_of(self, node: int) -> dict[str, float]:
        """The node's features, rounded; non-finite ones left out (a decision record carries finite
        numbers only; the decision's reason names them). Empty for a graph without that node."""
        if not 0 <= node < self.x.shape[0]:
            return {}
        row = self.x[node].tolist()
        return {name: round(row[i], 6) for i, name in enumerate(FEATURES) if math.isfinite(row[i])}

    def non_finite(self) -> list[str]:
        """Names of the features that are infinite or NaN on some node."""
        finite = np.isfinite(self.x.detach().cpu().numpy())  # numpy's test is the faster on one thread
        if finite.all():  # the usual case, at a fraction of the per-column answer's cost
            return []
        bad = (~finite).any(axis=0).tolist()
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


# capacity_gain (kasmina/capacity.py) is a loss-gradient norm, about 1e-3 for a host that fits its task
# and 1e-2 .. 1e-1 for one that lacks units: scaled so that this range spans about 0.1 .. 2.4.
CAPACITY_SCALE = 100.0


def _health_features(history: list[HealthSignal]) -> list[float]:
    if not history:
        return [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    h = history[-1]
    recent = history[-3:]  # the trends look at the last three signals
    return [
        h.health_score, _log1p(h.activation_variance), h.dead_neuron_ratio, h.avg_correlation,
        _log1p(h.gradient_norm), _log1p(h.execution_latency), 1.0 if h.error_count else 0.0,
        slope([s.health_score for s in recent]), slope([s.dead_neuron_ratio for s in recent]),
        _log1p(CAPACITY_SCALE * h.capacity_gain),
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


@dataclass(frozen=True)
class Topology:
    """What the session alone fixes, built once per session: node order, static features, edges, and the
    seed slots as arrays (what the decider masks with)."""

    layer_count: int
    seed_layer: torch.Tensor  # (S,) int64: the layer node of each seed (0 for a slot on an undeclared layer)
    seed_count: torch.Tensor  # (L, 1) float32: the seeds of each layer, at least 1 (the layer row's divisor)
    seedless: torch.Tensor | None  # (L,) bool: the layers without a seed; None when every layer has one
    seed_conv: np.ndarray  # (S,) float64: is_conv of that layer
    conv: torch.Tensor  # (L,) float32
    node_depth: torch.Tensor  # (N,) float32
    edge_index: torch.Tensor  # (2, E) int64
    node_layers: list[str]
    slots: list[tuple[int, int, str]]  # (layer_id, seed_idx, layer_name) of each seed, in session order
    slot_layer_ids: list[int]
    slot_seed_idxs: list[int]
    slot_layer_names: list[str]
    seeds_of_slot: dict[tuple[int, int], list[int]]
    slot_layer_id: np.ndarray  # (S,) int64
    slot_declared: np.ndarray  # (S,) bool: the slot's layer is declared by the session (it has a shape)
    declared: dict[int, LayerSpec]  # the declared layers by layer id


def _topology(run: RunState) -> Topology:
    cached = run.views.get("graph_topology")
    if cached is not None:
        return cached
    layers = run.layers()
    slots = run.seeds()
    position = {layer.layer_id: i for i, layer in enumerate(layers)}
    conv = [1.0 if layer.kind == "conv2d" else 0.0 for layer in layers]
    depth = [i / max(1, len(layers) - 1) for i in range(len(layers))]
    seed_layer = [position.get(layer_id, 0) for layer_id, _, _ in slots]
    by_name = {layer.name: i for i, layer in enumerate(layers)}
    sources, targets = [], []
    for edge in run.topology():
        if edge.source in by_name and edge.target in by_name:
            sources.append(by_name[edge.source])
            targets.append(by_name[edge.target])
    for i, (layer_id, _, _) in enumerate(slots):
        layer_node = position.get(layer_id)
        if layer_node is not None:
            sources += [layer_node, len(layers) + i]
            targets += [len(layers) + i, layer_node]
    seeds_of_slot: dict[tuple[int, int], list[int]] = {}
    for i, (layer_id, seed_idx, _) in enumerate(slots):
        seeds_of_slot.setdefault((layer_id, seed_idx), []).append(i)
    seed_index = torch.tensor(seed_layer, dtype=torch.long)
    counts = torch.zeros(len(layers)).index_add_(0, seed_index, torch.ones(len(slots)))
    topology = run.views["graph_topology"] = Topology(
        layer_count=len(layers),
        seed_layer=seed_index,
        seed_count=counts.clamp_min(1).unsqueeze(1),
        seedless=(counts == 0) if bool((counts == 0).any()) else None,
        seed_conv=np.array([conv[at] if layers else 0.0 for at in seed_layer], dtype=np.float64),
        conv=torch.tensor(conv),
        node_depth=torch.tensor(depth + [depth[at] for at in seed_layer] if layers else [0.0] * len(slots)),
        edge_index=torch.tensor([sources, targets], dtype=torch.long).view(2, -1),
        node_layers=[layer.name for layer in layers] + [name for _, _, name in slots],
        slots=slots,
        slot_layer_ids=[layer_id for layer_id, _, _ in slots],
        slot_seed_idxs=[seed_idx for _, seed_idx, _ in slots],
        slot_layer_names=[name for _, _, name in slots],
        seeds_of_slot=seeds_of_slot,
        slot_layer_id=np.array([layer_id for layer_id, _, _ in slots], dtype=np.int64),
        slot_declared=np.array([layer_id in position for layer_id, _, _ in slots], dtype=bool),
        declared={layer.layer_id: layer for layer in layers},
    )
    return topology


def _log1p_array(values: np.ndarray) -> np.ndarray:
    """``_log1p`` on every entry: NaN for anything not >= 0."""
    return np.log1p(np.where(values >= 0, values, np.nan))


def _trend(values: np.ndarray, count: np.ndarray) -> np.ndarray:
    """``slope`` of the last ``count`` (<= 3) values, given newest first: (S, 3) -> (S,)."""
    return np.where(count == 2, values[:, 0] - values[:, 1],
                    np.where(count == 3, (values[:, 0] - values[:, 2]) / 2, 0.0))


class _SeedArrays(NamedTuple):
    state: np.ndarray
    since: np.ndarray
    ready: np.ndarray
    errors: np.ndarray


def _seed_rows(run: RunState, topology: Topology, epoch: int) -> tuple[np.ndarray, _SeedArrays, int]:
    """The seed rows up to "ready" (S, 3 + 10 + len(STATES) + 2) float64, the seeds' states, entry epochs,
    readiness and errors (S,), and how many of them are active (germinated, training or grafting)."""
    count_seeds = len(topology.slots)
    state = np.zeros(count_seeds, dtype=np.int64)  # index in STATES; DORMANT unless a transition says otherwise
    since = np.zeros(count_seeds, dtype=np.int64)
    for slot, (seed_state, entered) in run.seed_states(epoch).items():
        for i in topology.seeds_of_slot.get(slot, ()):
            state[i], since[i] = _STATE_INDEX[seed_state], entered
    values, epochs, count = run.health.latest(run.seed_rows(), epoch)
    newest = values[:, 0]
    has = count > 0
    ready = has & (epochs[:, 0] == epoch) & (newest[:, COLUMN["is_ready_for_transition"]] != 0)
    errors = newest[:, COLUMN["error_count"]]
    rows = np.zeros((count_seeds, 3 + 10 + len(STATES) + 2), dtype=np.float64)
    with np.errstate(all="ignore"):  # non-finite inputs become non-finite features, as with math
        rows[:, 1] = 1.0
        rows[:, 2] = topology.seed_conv
        rows[:, 3] = np.where(has, newest[:, COLUMN["health_score"]], 1.0)
        rows[:, 4] = _log1p_array(newest[:, COLUMN["activation_variance"]])
        rows[:, 5] = newest[:, COLUMN["dead_neuron_ratio"]]
        rows[:, 6] = newest[:, COLUMN["avg_correlation"]]
        rows[:, 7] = _log1p_array(newest[:, COLUMN["gradient_norm"]])
        rows[:, 8] = _log1p_array(newest[:, COLUMN["execution_latency"]])
        rows[:, 9] = errors != 0
        rows[:, 10] = _trend(values[:, :, COLUMN["health_score"]], count)
        rows[:, 11] = _trend(values[:, :, COLUMN["dead_neuron_ratio"]], count)
        rows[:, 12] = _log1p_array(CAPACITY_SCALE * newest[:, COLUMN["capacity_gain"]])
    rows[np.arange(count_seeds), 13 + state] = 1.0
    rows[:, 13 + len(STATES)] = np.minimum(epoch - since, 20) / 10
    rows[:, 14 + len(STATES)] = ready
    active = int(_ACTIVE[state].sum())
    return rows, _SeedArrays(state, since, ready, errors.astype(np.int64)), active


def build_graph(run: RunState, epoch: int) -> GraphView:
    """The graph of ``run`` as of the end of ``epoch`` (only events of epochs <= ``epoch``)."""
    topology = _topology(run)
    history = run.epochs_until(epoch)
    current = history[-1]
    assert run.session is not None
    spec = run.session.training_config
    allowed, budget_left = germination_allowed(run, epoch)
    accuracies = [e.validation_accuracy for e in history[-4:]]

    rows, seeds, active = _seed_rows(run, topology, epoch)
    width = rows.shape[1]
    layers = topology.layer_count
    context = torch.tensor([
        current.validation_accuracy, slope(accuracies), min(len(history), 10) / 10,
        current.train_accuracy - current.validation_accuracy, _log1p(current.state.validation_loss),
        budget_left, 1.0 if allowed else 0.0, (epoch + 1) / max(1, spec.epochs), active / max(1, len(topology.slots)),
    ])
    # Written in place into one (N, F) tensor: no concatenation of its parts.
    x = torch.empty(layers + rows.shape[0], len(FEATURES))
    seed_x = x[layers:, :width]
    seed_x.copy_(torch.from_numpy(rows))  # cast to float32 once

    # Layer rows: the mean of their seeds' rows (a layer without seeds looks healthy and dormant).
    layer_x = x[:layers, :width]
    torch.div(torch.zeros(layers, width).index_add_(0, topology.seed_layer, seed_x), topology.seed_count, out=layer_x)
    empty = topology.seedless
    if empty is not None:
        layer_x[empty] = torch.tensor(
            [0.0, 0.0, 0.0, *_health_features([]), *(1.0 if s is SeedState.DORMANT else 0.0 for s in STATES), 0.0, 0.0])
    layer_x[:, 0], layer_x[:, 1], layer_x[:, 2] = 1.0, 0.0, topology.conv
    x[:, width:-1] = context
    x[:, -1] = topology.node_depth
    return GraphView(epoch, x, topology.edge_index, topology, seeds.state, seeds.since, seeds.ready, seeds.errors,
                     topology.node_layers, allowed)
