"""The ``gromo`` arm: the task's MLP host grown by the gromo package (TINY or GradMax), to a parameter budget.

gromo (``pip install gromo``, BSD-3, not Esper's code) builds the host as its ``GrowingMLP`` (the same
layers, ReLU, biases: the same parameter count as Tolaria's MLP) and grows hidden units at the start of
the epochs of a ``GrowthPlan``. One growth round, gromo's own protocol (``GrowingContainer``):
gather statistics over the training split with a summed loss (``init_computation``, forward, backward,
``update_computation``), ask every growable layer for its optimal new units (``compute_optimal_updates``
with the method's flags, at most the units that fit in the quota), keep the layer whose first-order
improvement is the largest among those that fit (``select_update``), bring the new units' weights to
the standard deviation of the layer's (``normalize_optimal_updates``, as gromo's own training runs do;
without it, many units grown at once on a 2-D task barely trained), choose their scale by a line search
on the training loss of the extended network (``extended_forward``), and ``apply_change``.
Rounds repeat within an epoch until its quota is spent or gromo finds nothing more to add (the rank of
its statistics bounds the units of one round: with 2-D inputs, about 3). Tolaria trains, evaluates and
publishes the run as any other; only this module imports gromo.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from services.core.errors import InputError
from services.peers.budget import GrowthPlan, epoch_quota, unit_cost, units_that_fit

GROMO_REQUIREMENT = "gromo==0.1.0"
# gromo's compute_optimal_updates flags that reproduce each paper (its docstring, gromo 0.1.0).
METHOD_FLAGS: dict[str, dict[str, bool]] = {
    "tiny": {"compute_delta": False, "use_covariance": True, "alpha_zero": False, "omega_zero": False,
             "use_projection": True, "ignore_singular_values": False},
    "gradmax": {"compute_delta": False, "use_covariance": False, "alpha_zero": True, "omega_zero": False,
                "use_projection": False, "ignore_singular_values": True},
}
LINE_SEARCH_SCALES = (0.1, 0.25, 0.5, 1.0)  # positive only: a unit added at scale 0 is dead and wastes the budget
MAX_ROUNDS_PER_EPOCH = 256
STATISTICS_BATCH = 1024


class PeerError(InputError):
    """A peer arm that cannot run here (its package is missing, or the host is not one it can grow)."""


def require_gromo() -> None:
    """A one-line PeerError naming the missing package when gromo (or one of its dependencies) cannot be imported."""
    try:
        importlib.import_module("gromo.containers.growing_mlp")
    except ImportError as exc:
        missing = exc.name or "gromo"
        raise PeerError(f"the gromo arm needs the {missing!r} package, which cannot be imported here "
                        f"({GROMO_REQUIREMENT} and its dependencies are in requirements.lock: `make venv`)") from None


def build_growing_mlp(features: int, hidden: Sequence[int], classes: int, device: torch.device) -> nn.Module:
    """The host as gromo's GrowingMLP: ``features -> hidden... -> classes`` with ReLU (gromo's MLP has one hidden
    width for every layer)."""
    require_gromo()
    from gromo.containers.growing_mlp import GrowingMLP  # type: ignore[import-untyped]  # gromo ships no types

    if not hidden or len(set(hidden)) != 1:
        raise PeerError(f"the gromo arm grows an MLP host with equal hidden widths (gromo's GrowingMLP); "
                        f"this host has hidden {list(hidden)}")
    return GrowingMLP(features, classes, hidden_size=hidden[0], number_hidden_layers=len(hidden),
                      activation=nn.ReLU(), use_bias=True, device=device)


def widths(model: Any) -> list[int]:
    """``[inputs, hidden..., outputs]`` of a GrowingMLP as it is now."""
    layers = list(model.layers)
    return [layers[0].in_features, *(layer.out_features for layer in layers)]


def parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class GromoGrower:
    """Grows a GrowingMLP by ``plan`` with gromo's ``method`` ("tiny" or "gradmax")."""

    def __init__(self, model: nn.Module, plan: GrowthPlan, method: str) -> None:
        if method not in METHOD_FLAGS:
            raise PeerError(f"unknown gromo method {method!r}; methods: {', '.join(METHOD_FLAGS)}")
        self.model: Any = model  # a GrowingMLP (gromo is untyped to mypy: its methods are called as they are)
        self.plan = plan
        self.flags = METHOD_FLAGS[method]

    def before_epoch(self, epoch: int, x: torch.Tensor, y: torch.Tensor) -> int:
        """Grow at the start of ``epoch`` on the training split (x, y); the parameters added (0: unchanged)."""
        start = parameters(self.model)
        quota = epoch_quota(self.plan, epoch, start)
        was_training = self.model.training
        try:
            for _ in range(MAX_ROUNDS_PER_EPOCH):
                left = quota - (parameters(self.model) - start)
                if left <= 0 or self._round(x, y, left) == 0:
                    break
        finally:
            self.model.train(was_training)
        return parameters(self.model) - start

    def _round(self, x: torch.Tensor, y: torch.Tensor, allowed: int) -> int:
        """One growth round within ``allowed`` parameters; the units added."""
        model = self.model
        now = widths(model)
        fits = [units_that_fit(allowed, unit_cost(now, i)) for i in range(len(now) - 2)]
        if not any(fits):
            return 0
        model.eval()
        model.set_growing_layers(scheduling_method="all")
        model.init_computation()
        for i in range(0, len(y), STATISTICS_BATCH):
            model.zero_grad()
            F.cross_entropy(model(x[i : i + STATISTICS_BATCH]), y[i : i + STATISTICS_BATCH], reduction="sum").backward()
            model.update_computation()
        growing = list(model._growing_layers)  # layer k grows hidden layer k - 1
        with warnings.catch_warnings():
            # A dead ReLU unit makes the input covariance singular; gromo then solves with the pseudo-inverse, as
            # it should, and says so each time.
            warnings.filterwarnings("ignore", "Using the pseudo-inverse", UserWarning)
            for layer, fit in zip(growing, fits, strict=True):
                layer.compute_optimal_updates(maximum_added_neurons=max(1, fit), **self.flags)
        model.reset_computation()
        model.zero_grad()
        gains = [float(layer.first_order_improvement) if fit else float("-inf")
                 for layer, fit in zip(growing, fits, strict=True)]
        best = max(range(len(gains)), key=gains.__getitem__)
        model.select_update(best)
        extension = growing[best].eigenvalues_extension
        units = 0 if extension is None else int(extension.shape[0])  # at most fits[best]: the cap it was asked with
        if units == 0:
            growing[best].delete_update()
            model.currently_updated_layer_index = None
            return 0
        growing[best].normalize_optimal_updates()  # new weights at the layer's scale, as gromo's own runs do
        model.set_scaling_factor(self._line_search(x, y))
        model.apply_change()
        return units

    @torch.no_grad()
    def _line_search(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """The scale of the new units with the lowest training loss of the extended network."""
        losses = {}
        for scale in LINE_SEARCH_SCALES:
            self.model.set_scaling_factor(scale)
            losses[scale] = float(F.cross_entropy(self.model.extended_forward(x), y))
        return min(losses, key=losses.__getitem__)
