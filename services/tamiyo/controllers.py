"""How a run's germinations are chosen when not by the policy's argmax: exploration, the heuristic, random.

A run's session names its controller (TrainingSessionEvent v6):

* ``policy`` (default): the policy version's GNN decides; with ``exploration`` eps > 0, at each epoch where a
  germination is possible a draw below eps grows a random dormant slot with a random family among the fitting
  kernels instead, whatever the policy's adapt probability (the decision records ``explored``);
* ``heuristic``: the teacher's rule that the shipped policy imitates (``teacher.teacher``);
* ``random``: N epochs drawn uniformly from the run's first epoch to 75 % of its epochs (where the teacher stops
  growing), N = the budget left at the run's start; at each of them (or the next epoch a germination is possible,
  when it is not) a random dormant slot and a random family among the fitting kernels. Same budget, no signal:
  the baseline a learned policy must beat.

Every draw is a function of (run id, epoch) through sha256, so a replay and a restarted Tamiyo decide the same
(never ``hash()``, which Python salts per process). A proposal is what the policy's forward gives the decider: an
adapt probability, a score per candidate slot and a probability per family; the decider's argmaxes do the rest.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np

from services.tamiyo.features import GraphView
from services.tamiyo.run_state import RunState

CONTROLLERS = ("policy", "heuristic", "random")
GROWTH_WINDOW = 0.75  # the share of the run's epochs in which random germinations are drawn (the teacher's limit)


def draw(run_id: str, epoch: int, purpose: str) -> random.Random:
    """A generator seeded from (run id, epoch, purpose): the same numbers in every process."""
    digest = hashlib.sha256(f"{run_id}\x00{epoch}\x00{purpose}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def explores(run: RunState, epoch: int) -> bool:
    """The policy's run explores at ``epoch`` (a draw below its exploration rate)."""
    return run.exploration > 0 and draw(run.run_id, epoch, "explore").random() < run.exploration


def random_choice(run: RunState, epoch: int, slots: int, families: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniform random scores over ``slots`` candidate slots and ``families`` family probabilities (argmax: uniform)."""
    rng = draw(run.run_id, epoch, "choice")
    return (np.array([rng.random() for _ in range(slots)]),
            np.array([rng.random() for _ in range(families)]))


def planned_epochs(run: RunState) -> list[int]:
    """The random controller's germination epochs: as many as the budget left at the run's start."""
    assert run.session is not None  # decided runs have a session
    spec = run.session.training_config
    start = run.first_epoch
    window = list(range(start, max(start, int(GROWTH_WINDOW * spec.epochs))))
    inherited = len([e for e in run.germinations(start) if e < start])
    count = min(len(window), max(0, spec.adaptation_budget - inherited))
    return sorted(draw(run.run_id, -1, "plan").sample(window, count))


def random_due(run: RunState, epoch: int) -> bool:
    """The random controller owes a germination at ``epoch``: more planned epochs are due than it has grown."""
    start = run.first_epoch
    grown = len([e for e in run.germinations(epoch) if e >= start])
    return sum(1 for e in planned_epochs(run) if e <= epoch) > grown


def heuristic_proposal(graph: GraphView, slots: np.ndarray, families: int) -> tuple[float, np.ndarray, np.ndarray]:
    """The teacher's rule as a proposal: adapt 1 or 0, its slot scored 1, its family probability 1."""
    from services.tamiyo.teacher import teacher  # the teacher imports the decider's families

    label = teacher(graph)
    layer_count = graph.topology.layer_count
    scores = np.array([1.0 if label.node == layer_count + int(s) else 0.0 for s in slots])
    probabilities = np.zeros(families)
    probabilities[label.family] = 1.0
    return (1.0 if label.adapt else 0.0), scores, probabilities
