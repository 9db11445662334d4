"""The layers' shapes now, and where a width seed may grow, derived from the log (pure: no Kafka, no torch).

The session declares each layer's shapes once. A width seed that FOSSILIZED merged its k units into
its layer (Kasmina, ``services.kasmina.growth``): from then on the layer makes ``out + k`` units and
the next layer in the declared topology (its consumer) reads ``k * c`` more inputs, ``c`` the inputs
the consumer reads per unit (1 for Linear -> Linear; H*W when a Linear reads pooled feature maps: the
declared consumer input over the declared producer output). The transition names the kernel; the
kernel's blueprint (Urza's catalogue, ``units_of``) says k. No contract field is needed. A session
published after a widening (a failed or completed run's, which Tamiyo keeps, and which a replay of a
recorded run folds before deciding its first epoch) declares the widened shapes already: the widenings
of the seeds it lists as FOSSILIZED are taken off first (``merged``), so every epoch sees the shapes
the run had then, whichever session was folded.

Kasmina's rules for width seeds (``SeedManager._check_room``), so that Tamiyo does not pick what it
would refuse: a width seed needs a consumer, and its layer and the consumer's to hold no kernel (a live
seed, or a fossilized side branch or depth block, which keep theirs: only width fossils merge theirs
away); a layer with a live width seed, as producer or consumer, takes no other seed. The session
declares the seeded layers only (data flows through them in order): a layer with no declared layer
after it may still have a consumer (``body.0`` of a one-hidden-layer MLP seeded there alone feeds the
head), unless it is the network's output (its output is the classes and nothing follows it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from contracts import CommandAction, LayerEdge, LayerSpec, SeedState, SeedTransition
from services.tamiyo.run_state import Issued, RunState

_LIVE = (SeedState.GERMINATED, SeedState.TRAINING, SeedState.GRAFTING)


@dataclass
class Growth:
    """Per declared layer id: its shapes now; which layers could take a width seed, which take no seed."""

    shapes: dict[int, tuple[list[int], list[int]]]
    outputs: AbstractSet[int] = frozenset()  # the network's output layer (no consumer at all)
    consumer: Mapping[int, int] = field(default_factory=dict)  # producer layer id -> consumer layer id
    holds_kernel: set[int] = field(default_factory=set)
    widening: set[int] = field(default_factory=set)  # layers a live width seed is growing (both of its layers)

    def width_ok(self, layer_id: int) -> bool:
        if layer_id in self.outputs:
            return False
        pair = {layer_id} | ({self.consumer[layer_id]} if layer_id in self.consumer else set())
        return not (pair & (self.holds_kernel | self.widening))

    def any_seed_ok(self, layer_id: int) -> bool:
        return layer_id not in self.widening

    def take(self, layer_id: int, width: bool) -> None:
        """A live seed in ``layer_id`` (or a germination of one on its way): a width seed is growing the
        layer and its consumer, any other holds a kernel there."""
        if width:
            self.widening.update(i for i in (layer_id, self.consumer.get(layer_id)) if i is not None)
        else:
            self.holds_kernel.add(layer_id)


@dataclass(frozen=True)
class Layout:
    """What the session alone fixes (built once per session by ``derive_for``): the declared layers, each
    producer's consumer, the declared shapes, the output layers, the seeds whose widening those shapes hold."""

    declared: dict[int, LayerSpec]
    consumer: dict[int, int]
    shapes: dict[int, tuple[list[int], list[int]]]  # never changed: ``derive`` replaces what it widens
    outputs: frozenset[int]
    merged: frozenset[tuple[int, int]]


def layout(layers: list[LayerSpec], edges: list[LayerEdge], num_classes: int,
           merged: frozenset[tuple[int, int]] = frozenset()) -> Layout:
    by_name = {layer.name: layer for layer in layers}
    consumer: dict[int, int] = {}
    for edge in edges:
        source, target = by_name.get(edge.source), by_name.get(edge.target)
        if source is not None and target is not None:
            consumer.setdefault(source.layer_id, target.layer_id)
    outputs = frozenset(layer.layer_id for layer in layers
                        if layer.layer_id not in consumer and layer.output_shape == [num_classes])
    return Layout({layer.layer_id: layer for layer in layers}, consumer,
                  {layer.layer_id: (list(layer.input_shape), list(layer.output_shape)) for layer in layers},
                  outputs, merged)


def derive(layers: list[LayerSpec], edges: list[LayerEdge], transitions: Iterable[SeedTransition], epoch: int,
           units_of: Callable[[str], int], num_classes: int,
           merged: frozenset[tuple[int, int]] = frozenset()) -> Growth:
    """The growth view after the boundary of ``epoch`` (transitions of later epochs are not yet seen);
    ``merged``: the seeds (layer id, seed index) whose widening the declared shapes include."""
    return grow(layout(layers, edges, num_classes, merged), transitions, epoch, units_of)


def grow(fixed: Layout, transitions: Iterable[SeedTransition], epoch: int, units_of: Callable[[str], int]) -> Growth:
    """``derive`` on a session's ``Layout``: what the transitions of epochs <= ``epoch`` make of it."""
    declared, consumer, merged = fixed.declared, fixed.consumer, fixed.merged
    shapes = dict(fixed.shapes)
    if merged:
        transitions = list(transitions)  # read twice
        for t in transitions:  # back to the shapes the run started with
            if t.to_state is SeedState.FOSSILIZED and t.kernel_id and (t.layer_id, t.seed_idx) in merged:
                _widen(declared, shapes, consumer, t.layer_id, -units_of(t.kernel_id))
    last: dict[tuple[int, int], SeedTransition] = {}
    kernels: dict[tuple[int, int], str] = {}  # the kernel a seed was germinated with (named on its transitions)
    for t in transitions:
        if t.epoch > epoch:
            continue
        last[(t.layer_id, t.seed_idx)] = t
        if t.kernel_id:
            kernels[(t.layer_id, t.seed_idx)] = t.kernel_id
        if t.to_state is SeedState.FOSSILIZED and t.kernel_id:
            _widen(declared, shapes, consumer, t.layer_id, units_of(t.kernel_id))
    growth = Growth(shapes, fixed.outputs, consumer)
    for (layer_id, seed_idx), t in last.items():
        kernel = kernels.get((layer_id, seed_idx))
        width = bool(kernel) and units_of(kernel or "") > 0
        if t.to_state in _LIVE:
            growth.take(layer_id, width)
        elif t.to_state is SeedState.FOSSILIZED and not width:
            growth.holds_kernel.add(layer_id)
    return growth


def _widen(declared: dict[int, LayerSpec], shapes: dict[int, tuple[list[int], list[int]]],
           consumer: dict[int, int], layer_id: int, units: int) -> None:
    """Add ``units`` to the layer's output and its consumer's input: new lists in ``shapes`` (the session's own
    are shared by every decision)."""
    producer = declared.get(layer_id)
    if units == 0 or producer is None or not producer.output_shape:
        return
    inputs, outputs = shapes[layer_id]
    shapes[layer_id] = (inputs, [outputs[0] + units, *outputs[1:]])
    target = consumer.get(layer_id)
    if target is None or not declared[target].input_shape:
        return
    per_unit = max(1, declared[target].input_shape[0] // producer.output_shape[0])
    inputs, outputs = shapes[target]
    shapes[target] = ([inputs[0] + units * per_unit, *inputs[1:]], outputs)


def derive_for(run: RunState, epoch: int, units_of: Callable[[str], int], issued: Iterable[Issued] = ()
               ) -> Growth:
    """``derive`` for a run (its session's classes, and the fossils its declared shapes already hold), the
    session's ``Layout`` built once and kept in ``run.views``. ``issued``: our commands not yet seen taking
    effect; a germination among them takes its layers now, as Kasmina will when it lands (a fast run can
    complete an epoch before the command is applied)."""
    fixed = run.views.get("growth_layout")
    if fixed is None:
        session = run.session
        assert session is not None, "growth is derived for runs that have a session"
        merged = frozenset((s.layer_id, s.seed_idx) for s in session.seeds if s.state is SeedState.FOSSILIZED)
        fixed = run.views["growth_layout"] = layout(run.layers(), run.topology(),
                                                    session.training_model_config.num_classes, merged)
    growth = grow(fixed, run.transitions, epoch, units_of)
    for command in issued:
        if command.action is CommandAction.GERMINATE:
            growth.take(command.layer_id, units_of(command.kernel_id or "") > 0)
    return growth
