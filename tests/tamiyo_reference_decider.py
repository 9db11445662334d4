"""The decider as it was before it became tensor work: a loop over the seed nodes, kept here (not in the
package) as the oracle of the randomised differential tests (``tests/unit/test_tamiyo_tensor_state.py``).

It reads a graph's seeds as the list of ``SeedNode`` (``GraphView.seeds``, or the reference graph's), and
decides as the per-seed Python did: same decisions, ids, reasons, commands.
"""

from __future__ import annotations

import logging
import math

from contracts import (
    AdaptationDecision,
    AdaptationType,
    CommandAction,
    KasminaCommand,
    SeedState,
    adaptation_type_of,
    deterministic_event_id,
)
from services.tamiyo.decider import (
    ADAPT_THRESHOLD,
    FAMILIES,
    GERMINATION_INDEX,
    IDLE_INDEX,
    NO_KERNEL_INDEX,
    Action,
    Candidate,
    KernelChooser,
    _unit,
    lifecycle_index,
)
from services.tamiyo.features import GraphView, build_graph
from services.tamiyo.policy import TamiyoPolicy
from services.tamiyo.run_state import RunState
from services.tamiyo.shapes import derive_for

log = logging.getLogger(__name__)


class ReferenceDecider:
    def __init__(self, policy: TamiyoPolicy, policy_version: str, chooser: KernelChooser,
                 threshold: float = ADAPT_THRESHOLD, graph_of=build_graph) -> None:
        self.graph_of = graph_of
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
        graph = self.graph_of(run, epoch)
        actions = self._lifecycle(run, graph)
        acted = {(a.command.layer_id, a.command.seed_idx) for a in actions if a.command}
        germination, why_not, p, urgency = self._germination(run, graph, acted)
        if germination is not None:
            actions.append(germination)
        if not actions:
            actions.append(self._action(run, graph, IDLE_INDEX, None, 0, why_not, 1.0 - (p or 0.0),
                                        urgency, {"adapt_probability": p or 0.0}))
        return actions

    # -- lifecycle rules ----------------------------------------------------------------------------
    def _lifecycle(self, run: RunState, graph: GraphView) -> list[Action]:
        assert run.session is not None  # decide() answers runs that have a session
        auto = run.session.training_config.auto_advance
        busy = {(i.layer_id, i.seed_idx) for i in run.pending(graph.epoch)}
        actions: list[Action] = []
        for seed in graph.seeds:
            if (seed.layer_id, seed.seed_idx) in busy:
                continue
            active = seed.state in (SeedState.GERMINATED, SeedState.TRAINING, SeedState.GRAFTING)
            if active and seed.errors:
                action, reason = CommandAction.CULL, f"seed reports {seed.errors} kernel errors"
            elif not auto and seed.ready and seed.state is SeedState.TRAINING:
                action, reason = CommandAction.ADVANCE, "seed trained: start grafting"
            elif not auto and seed.ready and seed.state is SeedState.GRAFTING:
                action, reason = CommandAction.FOSSILIZE, "graft complete: fossilize if the counterfactual gate passes"
            else:
                continue
            actions.append(self._action(run, graph, lifecycle_index(len(actions)), action, seed.node, reason, 1.0,
                                        1.0))
        return actions

    # -- the policy's choice ----------------------------------------------------------------------
    def _germination(self, run: RunState, graph: GraphView, acted: set
                     ) -> tuple[Action | None, str, float | None, float]:
        """(the germination or a no-op explaining why not, the reason when neither, adapt probability,
        urgency); the probability is None when the policy was not asked (nothing could be grown, or
        its inputs were not finite)."""
        if not graph.seeds:
            return None, "no action: the session declares no seed slots", None, 0.0
        busy = acted | {(i.layer_id, i.seed_idx) for i in run.pending(graph.epoch)}
        declared = {layer.layer_id: layer for layer in run.layers()}
        dormant = [s for s in graph.seeds if s.state is SeedState.DORMANT and (s.layer_id, s.seed_idx) not in busy]
        undeclared = sorted({s.layer_id for s in dormant if s.layer_id not in declared})
        dormant = [s for s in dormant if s.layer_id in declared]  # a slot without a declared layer has no shape
        assert run.session is not None
        # The growth rules are the package's (``shapes``): this oracle checks the array work around them.
        growth = derive_for(run, graph.epoch, self.chooser.units, run.pending(graph.epoch))
        dormant = [s for s in dormant if growth.any_seed_ok(s.layer_id)]
        if not graph.can_germinate or not dormant:
            reason = "no germination possible (adaptation off, budget, cooldown, or no dormant slot)"
            if undeclared:
                reason += f"; seed slots on undeclared layers {undeclared} cannot be grown"
            return None, reason, None, 0.0
        bad = graph.non_finite()
        if bad:
            return None, f"no action: non-finite features ({', '.join(bad)}); the policy was not asked", None, 0.0
        out = self.policy.decide(graph.x, graph.edge_index)
        p, urgency = float(out.adapt_probability), float(out.urgency)
        scores = out.node_scores.tolist()
        probabilities = out.blueprint_probabilities.tolist()
        wrong = [name for name, values in (("adapt_probability", [p]), ("urgency", [urgency]),
                                           ("node_scores", [scores[s.node] for s in dormant]),
                                           ("blueprint_probabilities", probabilities))
                 if not all(math.isfinite(v) for v in values)]
        if wrong:
            return None, f"no action: the policy's output is not finite ({', '.join(wrong)})", None, 0.0
        if not p >= self.threshold:  # written so that a NaN that got this far would not grow either
            return None, f"policy chose not to grow (p={p:.2f})", p, urgency
        seed = max(dormant, key=lambda s: (scores[s.node], -s.node))
        input_shape, output_shape = growth.shapes[seed.layer_id]
        candidates = [c for c in self.chooser.candidates(input_shape, output_shape)
                      if c.family != "width" or growth.width_ok(seed.layer_id)]
        extra = {"adapt_probability": p, "node_score": scores[seed.node]}
        if not candidates:
            return self._action(run, graph, NO_KERNEL_INDEX, None, seed.node,
                                f"would grow seed {seed.layer_name}[{seed.seed_idx}] but no characterised kernel fits "
                                f"{input_shape} -> {output_shape}", p, urgency, extra), "", p, urgency
        families = {c.family for c in candidates}
        known = [f for f in FAMILIES if f in families and FAMILIES.index(f) < len(probabilities)]
        if not known:
            return None, f"no action: no family the policy scores among the fitting kernels {sorted(families)}", p, \
                urgency
        family = max(known, key=lambda f: probabilities[FAMILIES.index(f)])
        chosen = next(c for c in candidates if c.family == family)
        extra["family_probability"] = probabilities[FAMILIES.index(family)]
        action = self._action(run, graph, GERMINATION_INDEX, CommandAction.GERMINATE, seed.node,
                              f"grow {family} kernel in {seed.layer_name}[{seed.seed_idx}] (p={p:.2f})",
                              p, urgency, extra, chosen)
        return action, "", p, urgency

    # -- building the records ------------------------------------------------------------------------
    def _action(self, run: RunState, graph: GraphView, index: int, action: CommandAction | None, node: int,
                reason: str, confidence: float, urgency: float, extra: dict[str, float] | None = None,
                kernel: Candidate | None = None) -> Action:
        """The decision (and its command, when ``action`` is one) at ``index`` of the epoch, about ``node``."""
        seed = next((s for s in graph.seeds if s.node == node), None)
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
            catalog_positions=self.chooser.positions(),
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
        decision = AdaptationDecision(
            decision_id=deterministic_event_id(run.run_id, "decision", epoch, IDLE_INDEX), layer_name="-",
            adaptation_type=AdaptationType.NO_OP, confidence=0.0, urgency=0.0, epoch=epoch,
            policy_version=self.policy_version, reason=reason[:1000], catalog_positions=self.chooser.positions(),
        )
        return Action(decision, None)
