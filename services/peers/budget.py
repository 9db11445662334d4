"""When a peer grows and by how much, so that it ends with the adaptive arm's parameter budget (pure: no torch).

A peer arm starts from the task's host and grows it at the start of epochs in the first part of the run
(every one of them by default: growth and training alternate, as in gromo's own protocol), so that the
grown network still trains for the rest. At each growth epoch it may add
an even share of what is left of the budget (``epoch_quota``); a new hidden unit costs its incoming
weights, its bias and its outgoing weights (``unit_cost``), and no growth ever takes the network past
the target: it ends at most one unit's cost short of it when the peer finds enough directions to grow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class GrowthPlan:
    epochs: tuple[int, ...]  # the epochs at whose start the peer grows, increasing
    target_parameters: int


def plan_growth(epochs: int, target_parameters: int, steps: int | None = None, fraction: float = 0.5) -> GrowthPlan:
    """``steps`` growth epochs spread evenly over epochs 1 .. ``fraction`` of the run (None: every one of them;
    epoch 0 trains the host first; a one-epoch run grows at its start)."""
    if epochs < 1 or (steps is not None and steps < 1) or not 0 < fraction <= 1:
        raise ValueError(f"a growth plan needs epochs >= 1, steps >= 1 and 0 < fraction <= 1 "
                         f"(got {epochs}, {steps}, {fraction})")
    last = min(epochs - 1, max(1, math.floor(epochs * fraction)))
    if last < 1:
        return GrowthPlan((0,), target_parameters)
    if steps is None or steps >= last:
        return GrowthPlan(tuple(range(1, last + 1)), target_parameters)
    return GrowthPlan(tuple(sorted({1 + round(i * (last - 1) / (steps - 1)) if steps > 1 else last
                                    for i in range(steps)})), target_parameters)


def epoch_quota(plan: GrowthPlan, epoch: int, parameters: int) -> int:
    """Parameters the peer may add at the start of ``epoch``: an even share of what is left over the growth
    epochs still to come (all of it at the last one); 0 outside the plan or once the budget is spent."""
    if epoch not in plan.epochs:
        return 0
    left = max(0, plan.target_parameters - parameters)
    return math.ceil(left / sum(1 for e in plan.epochs if e >= epoch))


def unit_cost(widths: list[int], hidden_index: int) -> int:
    """Parameters one new unit of hidden layer ``hidden_index`` adds to an MLP of ``widths``
    (``[inputs, hidden..., outputs]``): its incoming weights and bias, and its outgoing weights."""
    if not 0 <= hidden_index < len(widths) - 2:
        raise ValueError(f"hidden layer {hidden_index} is not one of the {len(widths) - 2} of {widths}")
    return widths[hidden_index] + 1 + widths[hidden_index + 2]


def units_that_fit(parameters: int, cost: int) -> int:
    """How many units of ``cost`` parameters fit in ``parameters``."""
    return max(0, parameters) // cost


def mlp_parameters(widths: list[int]) -> int:
    """Parameters of a fully connected MLP with biases: ``[inputs, hidden..., outputs]``."""
    return sum(a * b + b for a, b in zip(widths, widths[1:], strict=False))
