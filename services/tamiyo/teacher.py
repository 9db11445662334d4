"""The initial policy: a GNN trained on synthetic runs to imitate a heuristic teacher.

A fresh install has no recorded runs to learn from, so the shipped policy
(``policies/initial.*``) imitates a rule a practitioner would write:

- grow when budget and cooldown allow, a slot is dormant, there is time left (progress
  <= 0.75), and the run needs capacity: some layer's capacity signal is high (Kasmina's
  ``capacity_gain`` >= ``CAPACITY_NEED`` after 3 epochs: new units there would get a large
  loss gradient),
  or some layer is unhealthy (health < 0.7 or > 25% dead units), or — only for runs whose
  producers publish no capacity signal (all 0) — validation accuracy has plateaued (at least
  3 epochs seen, slope over the last 4 < 0.01/epoch). With the signal, a plateau whose
  layers all read low is a host that fits its task: no growth;
- grow in the dormant slot whose layer needs capacity most, then looks worst (capacity
  feature + half of: dead units + ill health + correlation);
- blueprint family: width (new units of the layer itself) when that layer's capacity signal says
  it needs units (``capacity_gain`` >= ``CAPACITY_NEED``: the signal measures exactly the gradient
  new units of the layer would get), else conv for a conv layer, bottleneck when units are dying,
  a wide MLP while accuracy is low, a small MLP otherwise. (Depth seeds are a family the policy
  can rate, but the teacher has no signal for them yet: it never picks them.)

The synthetic runs are real contract events (sessions, epochs, health signals,
transitions) folded into a RunState, so training sees exactly the features the service
builds. ``esper policy bootstrap`` rebuilds the shipped policy.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from contracts import (
    EpochCompleted,
    HealthSignal,
    LayerSpec,
    ModelSpec,
    Seed,
    SeedState,
    SeedTransition,
    SystemStatePacket,
    TrainingSession,
    TrainingSessionEvent,
    TrainingSpec,
)
from services.tamiyo.decider import FAMILIES
from services.tamiyo.features import CAPACITY_SCALE, INDEX, GraphView, build_graph
from services.tamiyo.policy import TamiyoPolicy
from services.tamiyo.run_state import RunState

# capacity_gain above which a layer needs units
# (README "Capacity telemetry": spirals and digits hosts that fit read 1e-3 .. 3e-2, under-capacity ones 1e-2 .. 3e-1).
CAPACITY_NEED = 0.01
_CAPACITY_NEED_FEATURE = math.log1p(CAPACITY_SCALE * CAPACITY_NEED)


@dataclass(frozen=True)
class Label:
    adapt: bool
    node: int | None  # the seed node to grow in
    family: int


def teacher(graph: GraphView) -> Label:
    x = graph.x
    dormant = [s for s in graph.seeds if s.state is SeedState.DORMANT]

    def col(name: str) -> torch.Tensor:
        return x[:, INDEX[name]]

    layers = col("is_layer") > 0
    unhealthy = bool((col("health_score")[layers] < 0.7).any() or (col("dead_neuron_ratio")[layers] > 0.25).any())
    plateau = float(col("epochs_seen")[0]) >= 0.3 and float(col("accuracy_trend")[0]) < 0.01
    capacity = col("log_capacity_gain")
    measured = bool((capacity[layers] > 0).any())
    needs_units = bool((capacity[layers] >= _CAPACITY_NEED_FEATURE).any())
    settled = float(col("epochs_seen")[0]) >= 0.3  # every loss gradient is large in the first epochs
    need = (needs_units and settled) or unhealthy or (plateau and not measured)
    adapt = bool(graph.can_germinate and dormant and float(col("progress")[0]) <= 0.75 and need)
    if not dormant:
        return Label(False, None, 0)
    badness = capacity + 0.5 * (col("dead_neuron_ratio") + (1 - col("health_score"))
                                + col("avg_correlation").clamp_min(0))
    node = max(dormant, key=lambda s: (float(badness[s.node]), -s.node)).node
    if float(capacity[node]) >= _CAPACITY_NEED_FEATURE:
        family = "width"
    elif float(x[node, INDEX["is_conv"]]) > 0:
        family = "conv"
    elif float(x[node, INDEX["dead_neuron_ratio"]]) > 0.3:
        family = "bottleneck"
    elif float(col("validation_accuracy")[0]) < 0.6:
        family = "mlp_wide"
    else:
        family = "mlp"
    return Label(adapt, node, FAMILIES.index(family))


def synthetic_run(rng: random.Random) -> tuple[RunState, int]:
    """A random but plausible run, up to a random epoch: (state, the epoch to decide at)."""
    n_layers = rng.randint(1, 5)
    per_layer = rng.randint(1, 3)
    conv_net = rng.random() < 0.3
    layers = []
    for i in range(n_layers):
        conv = conv_net and i < n_layers - 1
        width = rng.choice([8, 16, 32, 64])
        layers.append(
            LayerSpec(
                name=f"body.{2 * i}",
                layer_id=1000 + i,
                kind="conv2d" if conv else "linear",
                input_shape=[4, 8, 8] if conv else [width],
                output_shape=[8, 8, 8] if conv else [width],
            )
        )
    epochs = rng.randint(6, 30)
    budget = rng.randint(0, 4)
    session = TrainingSession(
        session_id="synthetic", name="synthetic", description="synthetic run",
        training_model_config=ModelSpec(architecture="mlp", input_shape=[2], num_classes=3, layers=layers),
        training_config=TrainingSpec(dataset="synthetic", epochs=epochs, batch_size=32, learning_rate=1e-3,
                                     adaptation_budget=budget, cooldown_epochs=rng.randint(0, 3),
                                     adaptation_enabled=rng.random() > 0.05, auto_advance=False),
        seeds=[Seed(layer_id=layer.layer_id, seed_idx=k, layer_name=layer.name) for layer in layers
               for k in range(per_layer)],
    )
    run = RunState("synthetic")
    run.apply_session(TrainingSessionEvent(session=session))
    at = rng.randint(0, epochs - 1)
    ceiling, speed = rng.uniform(0.4, 0.99), rng.uniform(0.05, 0.6)
    health = {(layer.layer_id, k): (rng.uniform(0.3, 1.0), rng.uniform(0.0, 0.6)) for layer in layers
              for k in range(per_layer)}
    # Capacity signal per layer (every seed of a layer carries its layer's): none from older producers,
    # else log-uniform over what hosts that fit (~1e-3) and hosts that lack units (1e-2 .. 1e-1) read.
    measured = rng.random() < 0.8
    capacity = {layer.layer_id: 10 ** rng.uniform(-3.5, -0.7) if measured else 0.0 for layer in layers}
    if rng.random() < 0.5:
        capacity[layers[-1].layer_id] = 0.0  # the output layer has no consumer: no signal
    for epoch in range(at + 1):
        acc = ceiling * (1 - (1 - speed) ** (epoch + 1)) + rng.gauss(0, 0.01)
        acc = min(1.0, max(0.0, acc))
        run.apply_epoch(EpochCompleted(
            state=SystemStatePacket(epoch=epoch, total_seeds=len(session.seeds), active_seeds=0,
                                    training_loss=1 - acc + 0.05, validation_loss=1 - acc + 0.1,
                                    system_load=0.5, memory_usage=0.5),
            train_accuracy=min(1.0, acc + rng.uniform(0, 0.05)), validation_accuracy=acc, epoch_seconds=1.0,
            parameter_count=1000))
        refused = run.apply_health_batch([HealthSignal(
            layer_id=layer_id, seed_idx=k, epoch=epoch, activation_variance=rng.uniform(0, 2),
            dead_neuron_ratio=min(1.0, max(0.0, dead + rng.gauss(0, 0.02))),
            avg_correlation=rng.uniform(-0.2, 0.8), gradient_norm=rng.uniform(0, 3),
            capacity_gain=capacity[layer_id] * math.exp(rng.gauss(0, 0.2)),
            health_score=min(1.0, max(0.0, score + rng.gauss(0, 0.02))), total_seeds=per_layer)
            for (layer_id, k), (score, dead) in health.items()])
        if refused:  # as apply_health one by one would have raised
            raise refused[0][1]
    # Some seeds already grown: makes budget, cooldown and slot occupancy vary.
    for seed in session.seeds:
        if rng.random() < 0.25:
            when = rng.randint(0, at)
            run.apply_transition(
                SeedTransition(
                    layer_id=seed.layer_id,
                    seed_idx=seed.seed_idx,
                    from_state=SeedState.DORMANT,
                    to_state=SeedState.GERMINATED,
                    epoch=when,
                )
            )
            final = rng.choice([SeedState.TRAINING, SeedState.GRAFTING, SeedState.FOSSILIZED, SeedState.CULLED])
            run.apply_transition(SeedTransition(layer_id=seed.layer_id, seed_idx=seed.seed_idx,
                                                from_state=SeedState.GERMINATED, to_state=final, epoch=when))
    return run, at


def synthetic_dataset(samples: int, seed: int = 0) -> list[tuple[GraphView, Label]]:
    rng = random.Random(seed)
    data: list[tuple[GraphView, Label]] = []
    while len(data) < samples:
        run, epoch = synthetic_run(rng)
        graph = build_graph(run, epoch)
        data.append((graph, teacher(graph)))
    return data


def imitation_loss(policy: TamiyoPolicy, graph: GraphView, label: Label) -> torch.Tensor:
    out = policy(graph.x, graph.edge_index)
    loss = nn.functional.binary_cross_entropy(out.adapt_probability.clamp(1e-6, 1 - 1e-6),
                                              torch.tensor(1.0 if label.adapt else 0.0))
    if label.node is not None:
        dormant = [s.node for s in graph.seeds if s.state is SeedState.DORMANT]
        logits = out.node_scores[dormant]
        loss = loss + nn.functional.cross_entropy(logits.unsqueeze(0), torch.tensor([dormant.index(label.node)]))
        loss = loss + nn.functional.nll_loss(torch.log(out.blueprint_probabilities + 1e-9).unsqueeze(0),
                                             torch.tensor([label.family]))
    return loss


def agreement(policy: TamiyoPolicy, data: list[tuple[GraphView, Label]]) -> dict[str, float]:
    """How often the policy makes the teacher's choices (adapt, slot, family)."""
    adapt = node = family = with_node = 0
    for graph, label in data:
        out = policy.decide(graph.x, graph.edge_index)
        adapt += (float(out.adapt_probability) >= 0.5) == label.adapt
        if label.node is not None:
            with_node += 1
            dormant = [s.node for s in graph.seeds if s.state is SeedState.DORMANT]
            node += max(dormant, key=lambda n: float(out.node_scores[n])) == label.node
            family += int(out.blueprint_probabilities.argmax()) == label.family
    return {"adapt_agreement": adapt / len(data), "slot_agreement": node / max(1, with_node),
            "family_agreement": family / max(1, with_node)}


# The shipped policy's hidden width, chosen for latency: a decision's forward is mostly products of
# (nodes x hidden) by (hidden x hidden), so 32 costs about a quarter of 64's arithmetic; at 1,000 nodes it
# brings the forward to about the bare 3-layer GCN's (64 features) time, and the teacher is imitated as well.
BOOTSTRAP_HIDDEN = 32


def bootstrap_policy(samples: int = 3000, epochs: int = 6, seed: int = 0, hidden: int = BOOTSTRAP_HIDDEN,
                     progress=None) -> tuple[TamiyoPolicy, dict[str, float]]:
    """Train a fresh policy to imitate the teacher; returns it and its agreement on held-out runs."""
    torch.manual_seed(seed)
    from services.tamiyo.features import FEATURES

    data = synthetic_dataset(samples, seed)
    held_out = synthetic_dataset(max(200, samples // 10), seed + 1)
    policy = TamiyoPolicy(len(FEATURES), hidden=hidden, blueprints=len(FAMILIES))
    optimizer = torch.optim.Adam(policy.parameters(), lr=2e-3)
    order = list(range(len(data)))
    rng = random.Random(seed)
    batch = 16
    for epoch in range(epochs):
        rng.shuffle(order)
        policy.train()
        for start in range(0, len(order), batch):
            optimizer.zero_grad()
            # A sum of (at least one) tensors is a tensor; ``sum`` is typed for its int start.
            loss = cast(torch.Tensor, sum(imitation_loss(policy, *data[i]) for i in order[start:start + batch])) / batch
            loss.backward()
            optimizer.step()
        if progress is not None:
            progress(epoch + 1, epochs)
    policy.eval()
    return policy, agreement(policy, held_out)
