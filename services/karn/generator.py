"""Pure blueprint generation: mutation and recombination guided by field reports (no Kafka, no torch).

Field reports score blueprints: a fossilized seed is a vote for its blueprint, a culled
one against. A fossilized width seed grew its layer: Karn answers it with the starter
blueprints for the layer's new shapes (``starter.widened_slot``) instead of mutations.
Karn mutates blueprints that fossilized more often than they were culled, recombines
two such blueprints that fit the same slot, and never touches the others.
Every candidate must still fit its slot and the IR limits: judged by the analytic plan
(``services.blueprints.ir_checks.check_buildable``), so no candidate is built to find out.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace

from contracts import Blueprint, BlueprintArchitecture, BlueprintOp, FieldReport, FieldReportOutcome, OpSpec
from services.blueprints.ir_checks import BlueprintError, check_buildable
from services.blueprints.starter import for_slot, widened_slot

MAX_WIDTH = 512
_ACTIVATIONS = (BlueprintOp.RELU, BlueprintOp.GELU, BlueprintOp.TANH)


@dataclass
class Score:
    fossilized: int = 0
    culled: int = 0

    @property
    def promising(self) -> bool:
        return self.fossilized > self.culled


class Generator:
    def __init__(self) -> None:
        self.blueprints: dict[str, Blueprint] = {}
        self.scores: dict[str, Score] = defaultdict(Score)

    def copy(self) -> Generator:
        """An independent copy: what the copy records or proposes leaves this one as it is (the blueprints,
        never changed, are shared)."""
        twin = Generator()
        twin.blueprints = dict(self.blueprints)
        twin.scores.update((bid, replace(score)) for bid, score in self.scores.items())
        return twin

    def know(self, blueprint: Blueprint) -> None:
        self.blueprints.setdefault(blueprint.blueprint_id, blueprint)

    def record(self, report: FieldReport) -> Score:
        score = self.scores[report.blueprint_id]
        if report.outcome == FieldReportOutcome.FOSSILIZED:
            score.fossilized += 1
        else:
            score.culled += 1
        return score

    def propose(self, report: FieldReport, rng_seed: str) -> list[Blueprint]:
        """New candidates after ``report`` (already recorded): mutations and one recombination."""
        parent = self.blueprints.get(report.blueprint_id)
        if parent is None:
            return []
        if report.outcome == FieldReportOutcome.FOSSILIZED and (slot := widened_slot(parent)) is not None:
            return self._fresh(for_slot(*slot))  # the layer grew: its slot has new shapes to seed for
        if not self.scores[report.blueprint_id].promising:
            return []
        rng = random.Random(rng_seed)
        candidates = [mutate(parent, rng) for _ in range(2)]
        partners = [b for bid, b in self.blueprints.items() if bid != parent.blueprint_id and self.scores[bid].promising
                    and b.architecture.input_shape == parent.architecture.input_shape
                    and b.architecture.output_shape == parent.architecture.output_shape]
        if partners:
            candidates.append(recombine(parent, rng.choice(sorted(partners, key=lambda b: b.blueprint_id)), rng))
        return self._fresh(candidates)

    def _fresh(self, candidates: Sequence[Blueprint | None]) -> list[Blueprint]:
        """The candidates not known yet that build (now known)."""
        fresh = []
        for bp in candidates:
            if bp is not None and bp.blueprint_id not in self.blueprints and _builds(bp.architecture):
                self.blueprints[bp.blueprint_id] = bp
                fresh.append(bp)
        return fresh


def _builds(arch: BlueprintArchitecture) -> bool:
    try:
        check_buildable(arch)
        return True
    except BlueprintError:
        return False


def _child(parent: Blueprint, layers: list[OpSpec], how: str) -> Blueprint | None:
    try:
        arch = parent.architecture.model_copy(update={"layers": layers})
        arch = BlueprintArchitecture.model_validate(arch.model_dump())
    except ValueError:
        return None
    return Blueprint(name=f"{parent.name[:200]}~{how}", description=f"{how} of {parent.blueprint_id}"[:1000],
                     architecture=arch, created_by="karn")


def mutate(parent: Blueprint, rng: random.Random) -> Blueprint | None:
    layers = [op.model_copy() for op in parent.architecture.layers]
    hidden = [i for i, op in enumerate(layers[:-1]) if op.width is not None]
    kinds = ["activation", "norm", "bottleneck"] + (["widen", "narrow"] if hidden else [])
    kind = rng.choice(kinds)
    if kind in ("widen", "narrow"):
        i = rng.choice(hidden)
        old = layers[i].width
        assert old is not None  # ``hidden`` holds the layers that have a width
        width = old * 2 if kind == "widen" else max(1, old // 2)
        layers[i] = layers[i].model_copy(update={"width": min(MAX_WIDTH, width)})
    elif kind == "activation":
        acts = [i for i, op in enumerate(layers) if op.op in _ACTIVATIONS]
        if not acts:
            return None
        i = rng.choice(acts)
        layers[i] = OpSpec(op=rng.choice([a for a in _ACTIVATIONS if a != layers[i].op]))
    elif kind == "norm":
        first = next((i for i, op in enumerate(layers) if op.op in (BlueprintOp.LINEAR, BlueprintOp.CONV2D)), None)
        if first is None or first + 1 >= len(layers) or layers[first + 1].op == BlueprintOp.LAYER_NORM:
            return None
        layers.insert(first + 1, OpSpec(op=BlueprintOp.LAYER_NORM))
    else:
        width = max(2, (parent.architecture.output_shape[0]) // 2)
        layers.append(OpSpec(op=BlueprintOp.BOTTLENECK, width=width))
    return _child(parent, layers, kind)


def recombine(a: Blueprint, b: Blueprint, rng: random.Random) -> Blueprint | None:
    cut_a = rng.randint(1, max(1, len(a.architecture.layers) - 1))
    cut_b = rng.randint(0, max(0, len(b.architecture.layers) - 1))
    layers = [*a.architecture.layers[:cut_a], *b.architecture.layers[cut_b:]]
    return _child(a, layers, f"cross-{b.blueprint_id[:11]}")
