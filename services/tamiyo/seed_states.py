"""What a run's seed transitions say as of an epoch, kept incrementally: pure, no Kafka, no numpy.

Asked at every decision: the state of every seed that ever moved (and the epoch it entered it), the
epochs of the germinations that happened, and the command ids that took effect, each counting only
the transitions of epochs <= the decision's epoch. Scanning every transition of the run per decision
made the cost of a decision grow with the run's length; here each transition is looked at once more
after it is folded, when the decisions reach its epoch.

The answer is exactly the scan's: transitions arrive in any epoch order, and the state of a slot is
that of its *last folded* transition among those of epochs <= ``epoch`` (not of its latest epoch),
so each slot remembers the fold position of the transition that set it. Transitions of later epochs
wait in a heap by epoch. Decisions ask at growing epochs; a question about an earlier epoch than the
last one (a reader going back: the teacher, training) is answered by a scan, without touching the
running view. Transitions taken out of the run's list (refused when the session arrived) make the
positions stale: ``reset`` starts the view again from the list.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from contracts import SeedState, SeedTransition

Slot = tuple[int, int]


@dataclass
class TransitionsAt:
    """One epoch's view of the transitions folded so far."""

    states: dict[Slot, tuple[SeedState, int]] = field(default_factory=dict)  # slot -> (state, epoch entered)
    germinated: list[int] = field(default_factory=list)  # epochs of GERMINATED transitions, in no order
    applied: set[str] = field(default_factory=set)  # command ids that took effect


def scan(transitions: list[SeedTransition], epoch: int) -> TransitionsAt:
    """The view at ``epoch`` by a pass over every transition."""
    view = TransitionsAt()
    for t in transitions:
        if t.epoch <= epoch:
            _take(view, t)
    return view


def _take(view: TransitionsAt, t: SeedTransition) -> None:
    view.states[(t.layer_id, t.seed_idx)] = (t.to_state, t.epoch)
    if t.to_state is SeedState.GERMINATED:
        view.germinated.append(t.epoch)
    if t.command_id:
        view.applied.add(t.command_id)


class SeedStates:
    """The view of a run's transitions at the latest epoch asked, moved forward as the decisions go."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._view = TransitionsAt()
        self._epoch: int | None = None  # the epoch the view is at
        self._seen = 0  # transitions of the list pushed into ``_later``
        self._later: list[tuple[int, int, SeedTransition]] = []  # (epoch, position, transition) not taken yet
        self._setter: dict[Slot, int] = {}  # slot -> position of the transition that set its state

    def at(self, transitions: list[SeedTransition], epoch: int) -> TransitionsAt:
        """The view at ``epoch`` of ``transitions`` (the run's list, only appended to since the last
        ``reset``). The running view itself is returned: read it, do not change it."""
        if self._epoch is not None and epoch < self._epoch:
            return scan(transitions, epoch)
        for position in range(self._seen, len(transitions)):
            t = transitions[position]
            heapq.heappush(self._later, (t.epoch, position, t))
        self._seen = len(transitions)
        view, setter, later = self._view, self._setter, self._later
        while later and later[0][0] <= epoch:
            _, position, t = heapq.heappop(later)
            slot = (t.layer_id, t.seed_idx)
            if position > setter.get(slot, -1):  # a transition folded later already set this slot
                setter[slot] = position
                view.states[slot] = (t.to_state, t.epoch)
            if t.to_state is SeedState.GERMINATED:
                view.germinated.append(t.epoch)
            if t.command_id:
                view.applied.add(t.command_id)
        self._epoch = epoch
        return view
