"""Capacity telemetry: how much the loss would gain from new units in a layer (GradMax's measure).

Take a seeded layer ``l`` with input ``a`` (B x in) and the layer that consumes its output,
``l+1``, with pre-activation output ``z`` and ``g_b = dL/dz_b`` (B x out; L the batch's mean
loss, so ``g`` already carries the 1/B). Give layer ``l`` ``k`` new units with fan-in
``W_in`` (k x in) and fan-out ``W_out`` (out x k) into ``l+1``, fan-out initialised to zero so
the function is unchanged (GradMax). Linearising the new units' activation at 0
(``sigma(0) = 0``, ``sigma'(0) = 1``), their outputs are ``W_in a_b`` and

    dL/dW_out = sum_b g_b (W_in a_b)^T = M W_in^T,        M = sum_b g_b a_b^T   (out x in).

Over fan-ins of unit norm the largest gradient one new unit can have is the largest singular
value of ``M`` (attained by the top right singular vector, GradMax's choice); ``k`` units with
orthonormal fan-ins reach sqrt(sigma_1^2 + ... + sigma_k^2). The published signal is

    capacity_gain = sigma_1(M_bar),   M_bar = the mean of M over the epoch's sampled steps,

i.e. the loss gradient w.r.t. the best single new unit's fan-out at the epoch's average
parameters. A layer that fits its task has nothing left that new units could pick up
(``g`` is small, or uncorrelated with the layer's input) and reads near 0; an under-capacity
layer keeps a large residual gradient that is linear in its input, which new units can take.

Shapes: for Conv2d layers the new units are 1x1 channels with a 1x1 fan-out tap, so rows
are (sample, position) pairs: ``M = sum_{b,p} g_{b,p} a_{b,p}^T``; when the consumer's spatial
size differs, ``a`` is average-pooled to it; a 2-D consumer of a 4-D input (the head after
pooling) sees ``a`` averaged over space. The output layer has no consumer: no signal (0).

Cost: on sampled training steps only, ``ROWS`` rows of the batch (an unbiased estimate,
scaled by B/ROWS): one (out x ROWS) @ (ROWS x in) product accumulated on the device without
synchronising, and one SVD of the small (out x in) matrix per layer per epoch.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.hooks import RemovableHandle

ROWS = 32  # rows of a sampled batch that feed the estimate


def capacity_gain(m: torch.Tensor, units: int = 1) -> float:
    """sqrt(sum of the ``units`` largest squared singular values of ``m``): the largest norm of
    dL/dW_out for ``units`` new units with orthonormal fan-ins (see the module docstring)."""
    if m.numel() == 0:
        return 0.0
    singular = torch.linalg.svdvals(m.double())
    value = float(singular[:units].pow(2).sum().sqrt())
    return value if value == value else 0.0  # NaN (a non-finite gradient) reads as no signal


def outer_rows(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``sum_rows g_row a_row^T`` (out x in) for a layer input ``a`` and its consumer's output gradient ``g``."""
    a, g = a.float(), g.float()
    if a.dim() == 4 and g.dim() == 4:
        if a.shape[2:] != g.shape[2:]:
            a = F.adaptive_avg_pool2d(a, (g.shape[2], g.shape[3]))
        return torch.einsum("bohw,bihw->oi", g, a)
    if a.dim() == 4:
        a = a.mean(dim=(2, 3))
    if g.dim() == 4:
        g = g.sum(dim=(2, 3))
    return g.reshape(g.shape[0], -1).T @ a.reshape(a.shape[0], -1)


class CapacityAccumulator:
    """Mean over sampled steps of M, fed by a layer (``stage``) and its consumer's output gradient.

    The consumer is hooked only on the steps its producer staged (a forward hook on every step would
    take every forward of the consumer off torch's hook-free fast path)."""

    def __init__(self) -> None:
        self.consumer: nn.Module | None = None  # set by ``attach_capacity_probes``; None: no signal
        self._staged: tuple[torch.Tensor, float] | None = None
        self._probe: RemovableHandle | None = None
        self.reset()

    @property
    def enabled(self) -> bool:
        return self.consumer is not None

    def reset(self) -> None:
        self._sum: torch.Tensor | None = None
        self._steps = 0

    def stage(self, layer_input: torch.Tensor) -> None:
        """The layer's input on a sampled training step; the consumer's output gradient completes it."""
        if self.consumer is not None:
            rows = layer_input.detach()[:ROWS]
            self._staged = (rows, layer_input.shape[0] / max(1, rows.shape[0]))
            if self._probe is None:  # first among its hooks, as when it was registered for good
                self._probe = self.consumer.register_forward_hook(self._on_consumer_output, prepend=True)

    def take_staged(self) -> tuple[torch.Tensor, float] | None:
        staged, self._staged = self._staged, None
        return staged

    def _on_consumer_output(self, module: nn.Module, inputs: object, output: object) -> None:
        """The consumer's forward after a staged step: hooks the gradient of its output, then unhooks itself."""
        if self._probe is not None:
            self._probe.remove()
            self._probe = None
        staged = self.take_staged()
        if staged is None or not isinstance(output, torch.Tensor) or not output.requires_grad:
            return
        rows, scale = staged
        output.register_hook(lambda grad: self.observe(rows, scale, grad))

    def observe(self, rows: torch.Tensor, scale: float, grad: torch.Tensor) -> None:
        g = grad.detach()[: rows.shape[0]]
        if scale != 1.0:
            g = g * scale  # on the few rows, not on the (out x in) product
        flat = rows.dim() == 2 and g.dim() == 2
        if flat and self._sum is not None and self._sum.shape == (g.shape[1], rows.shape[1]):
            self._sum.addmm_(g.T.float(), rows.float())  # in place: no (out x in) temporary on the hot path
        else:
            m = outer_rows(rows, g)
            if self._sum is None or self._sum.shape != m.shape:  # first step, or the layer changed width
                self._sum, self._steps = m, 0
            else:
                self._sum += m
        self._steps += 1

    def matrix(self) -> torch.Tensor | None:
        return None if self._sum is None else (self._sum / self._steps).cpu()

    def summary(self) -> float:
        """capacity_gain of the epoch so far (0 without a consumer or a sampled step)."""
        m = self.matrix()
        return 0.0 if m is None else capacity_gain(m)


def consumers(model: nn.Module, slot_paths: list[str]) -> dict[str, nn.Module]:
    """For each slot path, the next weight layer in module order (another slot, or a Linear or Conv2d not
    inside a slot): the layer that consumes the slot's output in the hosts Tolaria builds (module order is
    their data-flow order). A slot without one (the output layer) is left out."""
    inside = tuple(p + "." for p in slot_paths)
    layers = [(name, m) for name, m in model.named_modules()
              if name in slot_paths or (isinstance(m, (nn.Linear, nn.Conv2d)) and not name.startswith(inside))]
    names = [name for name, _ in layers]
    out = {}
    for path in slot_paths:
        at = names.index(path)
        if at + 1 < len(layers):
            out[path] = layers[at + 1][1]
    return out


def attach_capacity_probes(model: nn.Module, accumulators: dict[str, CapacityAccumulator]) -> None:
    """Give each slot's accumulator (by path) its consumer, whose output gradient it hooks on sampled steps."""
    for path, consumer in consumers(model, list(accumulators)).items():
        accumulators[path].consumer = consumer
