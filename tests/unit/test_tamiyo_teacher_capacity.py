"""The shipped policy's teacher reads the capacity signal: grow where new units would get a large gradient."""

from __future__ import annotations

import math
import random

from contracts import SeedState
from services.tamiyo.features import CAPACITY_SCALE, INDEX, GraphView, build_graph
from services.tamiyo.teacher import CAPACITY_NEED, synthetic_run, teacher


def _growable_graph() -> GraphView:
    """A synthetic run's graph where budget, cooldown and time allow growth and several slots are dormant,
    every layer healthy and accuracy flat after several epochs."""
    rng = random.Random(7)
    while True:
        run, epoch = synthetic_run(rng)
        graph = build_graph(run, epoch)
        dormant = [s for s in graph.seeds if s.state is SeedState.DORMANT]
        early = float(graph.x[0, INDEX["progress"]]) <= 0.75
        if graph.can_germinate and early and len({s.layer_id for s in dormant}) >= 2:
            break
    x = graph.x
    x[:, INDEX["health_score"]], x[:, INDEX["dead_neuron_ratio"]], x[:, INDEX["avg_correlation"]] = 1.0, 0.0, 0.0
    x[:, INDEX["epochs_seen"]], x[:, INDEX["accuracy_trend"]] = 0.6, 0.0
    return graph


def _set_capacity(graph: GraphView, gains: dict[str, float]) -> None:
    """capacity_gain per layer name, on the layer's node and its seeds' nodes."""
    for node, layer in enumerate(graph.layer_of_node):
        graph.x[node, INDEX["log_capacity_gain"]] = math.log1p(CAPACITY_SCALE * gains.get(layer, 0.0))


def test_a_plateau_with_every_layer_reading_low_is_a_host_that_fits_and_is_not_grown():
    graph = _growable_graph()
    _set_capacity(graph, dict.fromkeys(graph.layer_of_node, CAPACITY_NEED / 10))
    assert not teacher(graph).adapt


def test_a_layer_reading_high_is_grown_in_a_dormant_slot_of_that_layer():
    graph = _growable_graph()
    dormant_layers = sorted({s.layer_name for s in graph.seeds if s.state is SeedState.DORMANT})
    for needy in dormant_layers:
        gains = dict.fromkeys(graph.layer_of_node, CAPACITY_NEED / 10)
        gains[needy] = CAPACITY_NEED * 5
        _set_capacity(graph, gains)
        label = teacher(graph)
        assert label.adapt and label.node is not None
        assert graph.layer_of_node[label.node] == needy


def test_without_a_capacity_signal_the_plateau_rule_still_decides():
    graph = _growable_graph()
    _set_capacity(graph, {})
    assert teacher(graph).adapt
