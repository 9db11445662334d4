"""Tamiyo's decision at a completed epoch: lifecycle rules plus the GNN's germination choice.

- Lifecycle (rules on Kasmina's evidence, only for runs without ``auto_advance``): a
  TRAINING seed whose health signal says it is ready is advanced to GRAFTING; a GRAFTING
  seed whose alpha ramp finished is sent to the fossilization gate (Kasmina measures its
  counterfactual contribution and fossilizes or culls it); an active seed reporting errors
  is culled.
- Germination (the policy): when budget and cooldown allow and a slot is dormant, the GNN's
  adapt probability decides whether to grow, its node scores pick the seed slot, its
  blueprint head picks a blueprint family, and Urza's catalogue gives the fastest
  characterised kernel of that family that fits the slot: at the layer's shapes now, which a
  fossilized width seed has grown (``shapes``), and only where Kasmina would take it (a width
  seed needs its two layers free of kernels; a layer being widened takes no other seed).

Every epoch yields at least one AdaptationDecision (``no_op`` when nothing is done), so the
decision history is complete and a replay can compare it decision by decision. Each records the
positions of the catalogue its kernels came from (the chooser's ``positions``), so a replay decides
with that very catalogue (``services.urza.catalog_as_of``). A decision's
``action`` (the command it issues) is what was decided; its ``adaptation_type`` is derived.

Deciding is array work over every seed at once (masks for the lifecycle rules, the dormant and busy
slots; the argmax of the node scores and of the family probabilities, first on ties): Python runs only
for the records of what is decided. A test keeps the per-seed version as its oracle.

Decision ids are deterministic (run, epoch, index), so a replay decides the very same ids; the
indices are fixed (below) and must never change, else a replay of a recorded run would no
longer line up with the run's own decisions.

Fail closed: whatever a valid session and its telemetry hold, deciding gives decisions, never
an exception, and germinates only on finite evidence. No seed slots, slots on layers the session
does not declare, non-finite features or policy outputs (NaN compares False with everything, so
``p < threshold`` would let a NaN through): a ``no_op`` whose reason says why. An unexpected error
while deciding is logged and becomes a ``no_op`` too: the epoch is answered and nothing is grown.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from contracts import (
    AdaptationDecision,
    AdaptationType,
    BlueprintArchitecture,
    BlueprintOp,
    CatalogPosition,
    CommandAction,
    KasminaCommand,
    SeedState,
    adaptation_type_of,
    deterministic_event_id,
)
from contracts.blueprint_ir import DEPTH, WIDTH
from services.tamiyo import controllers
from services.tamiyo.features import STATES, GraphView, build_graph
from services.tamiyo.policy import TamiyoPolicy
from services.tamiyo.run_state import Issued, RunState
from services.tamiyo.shapes import derive_for

log = logging.getLogger(__name__)

_DORMANT, _TRAINING, _GRAFTING = (STATES.index(s) for s in (SeedState.DORMANT, SeedState.TRAINING, SeedState.GRAFTING))
_ACTIVE = np.array([s in (SeedState.GERMINATED, SeedState.TRAINING, SeedState.GRAFTING) for s in STATES])

# Side-branch families, then the seeds that grow the host itself (``kind`` width: new units of the layer;
# depth: a residual block after it). A policy's family head has one output per family, in this order.
FAMILIES: tuple[str, ...] = ("mlp", "mlp_wide", "bottleneck", "conv", "attention", "normed", "width", "depth")
ADAPT_THRESHOLD = 0.5

# The index of each decision within its epoch (part of its id and its command's id). The policy's
# decision has its own index, apart from the lifecycle decisions (0, 1, 2, ... in seed order, never
# one of the reserved indices); the no-op of an epoch where nothing else is decided takes 0.
IDLE_INDEX = 0
GERMINATION_INDEX = 50  # the policy grows a seed
NO_KERNEL_INDEX = 99  # the policy would grow a seed, but no characterised kernel fits the slot
RESERVED_INDICES = frozenset({GERMINATION_INDEX, NO_KERNEL_INDEX})


def lifecycle_index(n: int) -> int:
    """The index of the ``n``-th lifecycle decision of an epoch: ``n``, skipping the reserved indices
    (so that a 51st lifecycle decision never shares its id with the germination)."""
    index = n
    for reserved in sorted(RESERVED_INDICES):
        if index >= reserved:
            index += 1
    return index


def family_of(architecture: BlueprintArchitecture) -> str:
    if architecture.kind in (WIDTH, DEPTH):
        return architecture.kind
    ops = {spec.op for spec in architecture.layers}
    if BlueprintOp.ATTENTION_LITE in ops:
        return "attention"
    if BlueprintOp.CONV2D in ops:
        return "conv"
    if ops & {BlueprintOp.RESIDUAL, BlueprintOp.BOTTLENECK}:
        return "bottleneck"
    if ops & {BlueprintOp.LAYER_NORM, BlueprintOp.BATCH_NORM}:
        return "normed"
    widest = max((spec.width or 0) for spec in architecture.layers[:-1]) if len(architecture.layers) > 1 else 0
    return "mlp_wide" if widest > 32 else "mlp"


@dataclass(frozen=True)
class Candidate:
    kernel_id: str
    blueprint_id: str
    family: str


class KernelChooser(Protocol):
    def candidates(self, input_shape: list[int], output_shape: list[int]) -> list[Candidate]:
        """Usable kernels for a slot, best first (deterministic order)."""

    def units(self, kernel_id: str) -> int:
        """The units a width kernel adds to its layer (0 for any other kernel, or one not known)."""

    def positions(self) -> list[CatalogPosition]:
        """How far the catalogue the kernels come from was read (recorded on every decision)."""


@dataclass(frozen=True)
class Action:
    decision: AdaptationDecision
    command: KasminaCommand | None


class Decider:
    def __init__(self, policy: TamiyoPolicy, policy_version: str, chooser: KernelChooser,
                 threshold: float = ADAPT_THRESHOLD) -> None:
        self.policy = policy
        self.policy_version = policy_version
        self.chooser = chooser
        self.threshold = threshold

    def decide(self, run: RunState, epoch: int) -> list[Action]:
        """The decisions answering ``epoch`` (complete, of a run with a session): never raises."""
        try:
            return self._decide(run, epoch)
        except Exception as exc:  # fail closed: a bug must not crash-loop the service nor grow anything
            log.exception("deciding failed run_id=%s epoch=%d", run.run_id, epoch)
            return [self._fallback(run, epoch, f"no action: deciding failed ({type(exc).__name__}: {exc})")]

    def _decide(self, run: RunState, epoch: int) -> list[Action]:
        graph = build_graph(run, epoch)
        issued = run.pending(graph.epoch)
        pending = _slot_mask(graph, issued)
        actions = self._lifecycle(run, graph, pending)
        acted = _slot_mask(graph, [a.command for a in actions if a.command])
        germination, why_not, p, urgency = self._germination(run, graph, pending | acted, issued)
        if germination is not None:
            actions.append(germination)
        if not actions:
            actions.append(self._action(run, graph, IDLE_INDEX, None, 0, why_not, 1.0 - (p or 0.0),
                                        urgency, {"adapt_probability": p or 0.0}))
        return actions

    # -- lifecycle rules ----------------------------------------------------------------------------
    def _lifecycle(self, run: RunState, graph: GraphView, busy: np.ndarray) -> list[Action]:
        """Masks over every seed at once; Python only for the seeds acted on (the records)."""
        assert run.session is not None  # decide() answers runs that have a session
        auto = run.session.training_config.auto_advance
        state, free = graph.seed_state, ~busy
        cull = free & _ACTIVE[state] & (graph.seed_errors != 0)
        rule = free & ~cull & graph.seed_ready & (not auto)
        advance = rule & (state == _TRAINING)
        fossilize = rule & (state == _GRAFTING)
        actions: list[Action] = []
        for i in np.flatnonzero(cull | advance | fossilize).tolist():  # in seed order, as the indices say
            if cull[i]:
                action, reason = CommandAction.CULL, f"seed reports {int(graph.seed_errors[i])} kernel errors"
            elif advance[i]:
                action, reason = CommandAction.ADVANCE, "seed trained: start grafting"
            else:
                action, reason = CommandAction.FOSSILIZE, "graft complete: fossilize if the counterfactual gate passes"
            actions.append(self._action(run, graph, lifecycle_index(len(actions)), action,
                                        graph.topology.layer_count + i, reason, 1.0, 1.0))
        return actions

    # -- the policy's choice ----------------------------------------------------------------------
    def _germination(self, run: RunState, graph: GraphView, busy: np.ndarray, issued: list[Issued]
                     ) -> tuple[Action | None, str, float | None, float]:
        """(the germination or a no-op explaining why not, the reason when neither, adapt probability,
        urgency); the probability is None when the policy was not asked (nothing could be grown, or
        its inputs were not finite). ``busy``: the slots with a command pending or decided this epoch;
        ``issued``: our commands not yet seen taking effect."""
        topology = graph.topology
        if not topology.slots:
            return None, "no action: the session declares no seed slots", None, 0.0
        dormant = (graph.seed_state == _DORMANT) & ~busy
        undeclared_dormant = dormant & ~topology.slot_declared
        dormant &= topology.slot_declared  # a slot without a declared layer has no shape
        assert run.session is not None  # decide() answers runs that have a session
        growth = derive_for(run, graph.epoch, self.chooser.units, issued)
        if growth.widening:  # a layer a live width seed grows takes no other seed (Kasmina would refuse it)
            dormant &= ~np.isin(topology.slot_layer_id, sorted(growth.widening))
        if not graph.can_germinate or not dormant.any():
            reason = "no germination possible (adaptation off, budget, cooldown, or no dormant slot)"
            undeclared = np.unique(topology.slot_layer_id[undeclared_dormant]).tolist()
            if undeclared:
                reason += f"; seed slots on undeclared layers {undeclared} cannot be grown"
            return None, reason, None, 0.0
        bad = graph.non_finite()
        if bad:
            return None, f"no action: non-finite features ({', '.join(bad)}); the policy was not asked", None, 0.0
        slots = np.flatnonzero(dormant)
        explored = False
        if run.controller == "policy":
            out = self.policy.decide(graph.x, graph.edge_index)
            p, urgency = float(out.adapt_probability), float(out.urgency)
            scores = out.node_scores.detach().cpu().numpy().astype(np.float64)[topology.layer_count + slots]
            probabilities = out.blueprint_probabilities.detach().cpu().numpy().astype(np.float64)
            wrong = [name for name, values in (("adapt_probability", np.array([p])),
                                               ("urgency", np.array([urgency])),
                                               ("node_scores", scores), ("blueprint_probabilities", probabilities))
                     if not np.isfinite(values).all()]
            if wrong:
                return None, f"no action: the policy's output is not finite ({', '.join(wrong)})", None, 0.0
            explored = controllers.explores(run, graph.epoch)
            if explored:  # a random slot and family, whatever the policy would do (its p stays on the record)
                scores, probabilities = controllers.random_choice(run, graph.epoch, len(slots), len(probabilities))
            elif not p >= self.threshold:  # written so that a NaN that got this far would not grow either
                return None, f"policy chose not to grow (p={p:.2f})", p, urgency
        else:
            urgency = 0.5
            if run.controller == "heuristic":
                p, scores, probabilities = controllers.heuristic_proposal(graph, slots, len(FAMILIES))
            else:
                p = 1.0 if controllers.random_due(run, graph.epoch) else 0.0
                scores, probabilities = controllers.random_choice(run, graph.epoch, len(slots), len(FAMILIES))
            if not p >= self.threshold:
                return None, f"{run.controller} controller chose not to grow", p, urgency
        # The highest score; among equal scores, the first slot (the lowest node).
        best = int(np.flatnonzero(scores == scores.max())[0])
        seed = graph.seed(int(slots[best]))
        input_shape, output_shape = growth.shapes[seed.layer_id]  # the shapes now: widenings included
        candidates = [c for c in self.chooser.candidates(input_shape, output_shape)
                      if c.family != WIDTH or growth.width_ok(seed.layer_id)]
        extra = {"adapt_probability": p, "node_score": float(scores[best])}
        if not candidates:
            return self._action(run, graph, NO_KERNEL_INDEX, None, seed.node,
                                f"would grow seed {seed.layer_name}[{seed.seed_idx}] but no characterised kernel fits "
                                f"{input_shape} -> {output_shape}", p, urgency, extra), "", p, urgency
        families = {c.family for c in candidates}
        # The family the policy rates highest among those of the fitting kernels (the first in FAMILIES on a tie).
        known = np.array([f in families for f in FAMILIES[:len(probabilities)]], dtype=bool)
        if not known.any():
            return None, f"no action: no family the policy scores among the fitting kernels {sorted(families)}", p, \
                urgency
        rated = np.where(known, probabilities[:len(known)], -np.inf)
        family = FAMILIES[int(np.flatnonzero(rated == rated.max())[0])]
        chosen = next(c for c in candidates if c.family == family)
        extra["family_probability"] = float(probabilities[FAMILIES.index(family)])
        why = "explore: " if explored else "" if run.controller == "policy" else f"{run.controller}: "
        action = self._action(run, graph, GERMINATION_INDEX, CommandAction.GERMINATE, seed.node,
                              f"{why}grow {family} kernel in {seed.layer_name}[{seed.seed_idx}] (p={p:.2f})",
                              p, urgency, extra, chosen, explored=explored)
        return action, "", p, urgency

    # -- building the records ------------------------------------------------------------------------
    def _action(self, run: RunState, graph: GraphView, index: int, action: CommandAction | None, node: int,
                reason: str, confidence: float, urgency: float, extra: dict[str, float] | None = None,
                kernel: Candidate | None = None, *, explored: bool = False) -> Action:
        """The decision (and its command, when ``action`` is one) at ``index`` of the epoch, about ``node``."""
        slot = node - graph.topology.layer_count
        seed = graph.seed(slot) if 0 <= slot < len(graph.topology.slots) else None
        decision_id = deterministic_event_id(run.run_id, "decision", graph.epoch, index)
        command_id = deterministic_event_id(run.run_id, "command", graph.epoch, index) if action else None
        features = graph.features_of(node) | {k: v for k, v in (extra or {}).items() if math.isfinite(v)}
        decision = AdaptationDecision(
            decision_id=decision_id,
            layer_name=graph.layer_of_node[node] if 0 <= node < len(graph.layer_of_node) else "-",
            adaptation_type=adaptation_type_of(action), confidence=_unit(confidence), urgency=_unit(urgency),
            epoch=graph.epoch, layer_id=seed.layer_id if seed else None, seed_idx=seed.seed_idx if seed else None,
            blueprint_id=kernel.blueprint_id if kernel else None, kernel_id=kernel.kernel_id if kernel else None,
            policy_version=self.policy_version, reason=reason, features=features,
            command_id=command_id, action=action, family=kernel.family if kernel else None,
            catalog_positions=self.chooser.positions(), explored=explored,
        )
        command = None
        if action is not None and seed is not None:
            assert command_id is not None  # set whenever there is an action
            command = KasminaCommand(
                command_id=command_id, action=action, layer_id=seed.layer_id, seed_idx=seed.seed_idx,
                layer_name=seed.layer_name, blueprint_id=decision.blueprint_id, kernel_id=decision.kernel_id,
                decision_id=decision_id, issued_at_epoch=graph.epoch + 1,
            )
        return Action(decision, command)

    def _fallback(self, run: RunState, epoch: int, reason: str) -> Action:
        """A ``no_op`` built from nothing but the run and the epoch (when the graph itself failed)."""
        return idle_action(run.run_id, epoch, self.policy_version, reason, self._positions())

    def _positions(self) -> list[CatalogPosition]:
        try:
            return self.chooser.positions()
        except Exception:  # the fallback must not fail: a decision without positions replays with the whole catalogue
            log.exception("the catalogue's positions are not readable")
            return []


def idle_action(run_id: str, epoch: int, policy_version: str, reason: str,
                positions: list[CatalogPosition] | None = None) -> Action:
    """A ``no_op`` built from nothing but the run, the epoch and the version that was to decide (when the graph
    itself failed, or that version cannot be loaded); ``positions``: the catalogue's, when one was at hand."""
    decision = AdaptationDecision(
        decision_id=deterministic_event_id(run_id, "decision", epoch, IDLE_INDEX), layer_name="-",
        adaptation_type=AdaptationType.NO_OP, confidence=0.0, urgency=0.0, epoch=epoch,
        policy_version=policy_version[:100], reason=reason[:1000], catalog_positions=positions or [],
    )
    return Action(decision, None)


def _slot_mask(graph: GraphView, slots: Iterable[Issued | KasminaCommand]) -> np.ndarray:
    """(S,) bool: the seeds of the graph in any of ``slots`` (by layer id and seed index; a session may name a slot
    twice, each of its seeds is marked)."""
    mask = np.zeros(len(graph.topology.slots), dtype=bool)
    of_slot = graph.topology.seeds_of_slot
    for slot in slots:
        mask[of_slot.get((slot.layer_id, slot.seed_idx), [])] = True
    return mask


def _unit(value: float) -> float:
    """``value`` clipped to [0, 1]; 0 when it is not a number."""
    return min(1.0, max(0.0, value)) if math.isfinite(value) else (1.0 if value == math.inf else 0.0)


def record(run: RunState, decision: AdaptationDecision) -> None:
    """Fold one of our decisions (just made, or read back from the log) into the run's state."""
    run.decided.add(decision.epoch)
    if run.policy_version is None and decision.policy_version:
        run.policy_version = decision.policy_version
    command_id, action = decision.command_id, decision.action
    if command_id and action and decision.layer_id is not None and decision.seed_idx is not None:
        if all(i.command_id != command_id for i in run.issued):
            run.issued.append(Issued(command_id, action, decision.layer_id, decision.seed_idx, decision.epoch,
                                     decision.kernel_id))
