"""Seeds that grow the host itself: width seeds (new units of a layer) and depth seeds (a block after it).

A width seed on a producer layer P (the Linear or Conv2d of a seed slot) whose output reaches the
next layer C (the consumer) through channel-wise modules only (activations, pooling; a flatten
before a Linear consumer):

    units = fan_in(x)                           new rows of P: the blueprint's one op
    C(z) -> C(z) + alpha * fan_out . path(units)  new columns of C, zero at germination

so germinating changes nothing (fan_out is zero) and neither does alpha 0. FOSSILIZED merges the
units into P's and C's weight tensors (``merge_width``: the host's real width grows, and at
alpha 1 the merged host computes exactly what the seed did); CULLED removes the hook and the
kernel, which leaves the host exactly as it was.

A depth seed is a block after the layer, ``y + alpha * block(y)``, whose last op is built zero:
the identity when it is inserted (the slot applies it; see ``seed_slot``).

"Next layer" is the next Linear, Conv2d or seed slot in module registration order, the same
data-flow order ``wrap_layers`` relies on; the modules registered between them are the path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from contracts import BlueprintArchitecture
from contracts.blueprint_ir import DEPTH, WIDTH
from services.kasmina.seed_slot import KasminaError, SeedSlot

# Modules that act on each channel alone: the new units may pass through them unchanged in meaning.
_CHANNELWISE = (nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.Identity, nn.AdaptiveAvgPool2d, nn.AvgPool2d,
                nn.MaxPool2d)
Layer = nn.Linear | nn.Conv2d


def fits_slot(arch: BlueprintArchitecture, slot: SeedSlot) -> bool:
    """Whether a kernel of ``arch`` fits ``slot``: a depth block maps the layer's output to itself."""
    if arch.kind == DEPTH:
        return arch.input_shape == slot.output_shape
    return arch.input_shape == slot.input_shape and arch.output_shape == slot.output_shape


def units_of(layer: Layer) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


@dataclass(frozen=True)
class NextLayer:
    """The layer a producer's units flow into, and the channel-wise modules on the way."""

    path: str
    layer: Layer  # whose weight gets the new columns (a seed slot's host, or a bare layer)
    slot: SeedSlot | None
    between: tuple[nn.Module, ...]
    columns_per_unit: int  # a Linear after pooled feature maps reads H*W columns per channel


def find_consumer(model: nn.Module, producer: SeedSlot) -> NextLayer:
    """The next layer after ``producer`` in module order; KasminaError when units could not reach it unchanged."""
    modules = list(model.named_modules())
    names = [name for name, _ in modules]
    if producer.layer_name not in names:
        raise KasminaError(f"{producer.layer_name} is not a module of this model")
    between: list[nn.Module] = []
    prefix = producer.layer_name + "."
    for name, module in modules[names.index(producer.layer_name) + 1:]:
        if name.startswith(prefix):
            continue  # the producer's own host and kernels
        if isinstance(module, SeedSlot | nn.Linear | nn.Conv2d):
            slot = module if isinstance(module, SeedSlot) else None
            layer = module.host if isinstance(module, SeedSlot) else module
            assert isinstance(layer, nn.Linear | nn.Conv2d)  # SeedSlot only wraps these
            return NextLayer(name, layer, slot, tuple(between), _columns_per_unit(producer, layer, name))
        if next(module.children(), None) is not None:
            continue  # a container: its children follow in the walk
        if not isinstance(module, _CHANNELWISE):
            raise KasminaError(f"{producer.layer_name}: new units would pass through {type(module).__name__} "
                               f"({name}) on the way to the next layer; only channel-wise modules may")
        between.append(module)
    raise KasminaError(f"{producer.layer_name} has no layer after it: a width seed needs a consumer")


def _columns_per_unit(producer: SeedSlot, layer: Layer, name: str) -> int:
    units = units_of(producer.host)
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1 or layer.in_channels != units:
            raise KasminaError(f"{name}: a grouped conv or one that does not read {producer.layer_name}'s "
                               f"{units} channels cannot take new input channels")
        return 1
    if layer.in_features % units:
        raise KasminaError(f"{name} reads {layer.in_features} features, not a multiple of "
                           f"{producer.layer_name}'s {units} units")
    return layer.in_features // units


class WidthSeed(nn.Module):
    """A width seed's kernel: ``fan_in`` (built from the blueprint) makes the new units; ``fan_out`` feeds them on."""

    def __init__(self, fan_in: nn.Module, fan_out: torch.Tensor) -> None:
        super().__init__()
        self.fan_in = fan_in
        self.fan_out = nn.Parameter(fan_out)

    @property
    def op(self) -> Layer:
        layer = self.fan_in[0] if isinstance(self.fan_in, nn.Sequential) else self.fan_in
        if not isinstance(layer, nn.Linear | nn.Conv2d):
            raise KasminaError(f"a width seed's fan-in is a Linear or Conv2d, not {type(layer).__name__}")
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fan_in(x)


def _fan_out_shape(consumer: NextLayer, units: int) -> tuple[int, ...]:
    layer = consumer.layer
    if isinstance(layer, nn.Linear):
        return (layer.out_features, units * consumer.columns_per_unit)
    return (layer.out_channels, units, *layer.kernel_size)


def check_geometry(producer: SeedSlot, fan_in: Layer) -> None:
    """The new units must be rows of the producer's weight: same input, same kernel geometry, a bias alike."""
    host = producer.host
    if type(fan_in) is not type(host):
        raise KasminaError(f"{producer.layer_name}: a {type(fan_in).__name__} fan-in cannot add units to a "
                           f"{type(host).__name__}")
    if (fan_in.bias is None) != (host.bias is None):
        raise KasminaError(f"{producer.layer_name}: the fan-in's bias does not match the layer's")
    if isinstance(fan_in, nn.Conv2d) and isinstance(host, nn.Conv2d):
        mine = (fan_in.kernel_size, fan_in.stride, fan_in.padding, fan_in.dilation, fan_in.groups)
        theirs = (host.kernel_size, host.stride, host.padding, host.dilation, host.groups)
        if mine != theirs:
            raise KasminaError(f"{producer.layer_name}: fan-in geometry (kernel, stride, padding, dilation, groups) "
                               f"{mine} differs from the layer's {theirs}")
    if fan_in.weight.shape[1:] != host.weight.shape[1:]:
        raise KasminaError(f"{producer.layer_name}: the fan-in reads {list(fan_in.weight.shape[1:])}, the layer "
                           f"{list(host.weight.shape[1:])}")


class WidthLink:
    """The running part of a width seed: the producer slot stashes its units, the consumer's hook adds them."""

    def __init__(self, producer: SeedSlot, idx: int, seed: WidthSeed, consumer: NextLayer) -> None:
        self.producer, self.idx, self.seed, self.consumer = producer, idx, seed, consumer
        self.pending: tuple[torch.Tensor, float] | None = None
        self._handle = consumer.layer.register_forward_hook(self._add_units)

    def _add_units(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor
                   ) -> torch.Tensor | None:
        pending, self.pending = self.pending, None
        if pending is None:
            return None
        units, alpha = pending
        return output + alpha * self.contribution(units)

    def contribution(self, units: torch.Tensor) -> torch.Tensor:
        """What the units add to the consumer's output at alpha 1 (Shapes: units (B, k) or (B, k, H, W))."""
        for module in self.consumer.between:
            units = module(units)
        layer = self.consumer.layer
        if isinstance(layer, nn.Linear):
            return F.linear(units.flatten(1), self.seed.fan_out)
        return F.conv2d(units, self.seed.fan_out, None, layer.stride, layer.padding, layer.dilation)

    def remove(self) -> None:
        self._handle.remove()
        self.pending = None


def make_width_seed(model: nn.Module, producer: SeedSlot, fan_in: nn.Module) -> tuple[WidthSeed, NextLayer]:
    """Wrap a compiled fan-in with a zero fan-out sized for the consumer of ``producer``."""
    consumer = find_consumer(model, producer)
    seed = WidthSeed(fan_in, torch.zeros(0))
    check_geometry(producer, seed.op)
    device = producer.host.weight.device
    seed.fan_out = nn.Parameter(torch.zeros(_fan_out_shape(consumer, units_of(seed.op)), device=device))
    return seed, consumer


GRADMAX_CANDIDATES = 1024


def gradmax_fan_in(producer: SeedSlot, seed: WidthSeed, consumer: NextLayer, loss: torch.Tensor,
                   captured: dict[str, torch.Tensor]) -> bool:
    """GradMax-style fan-in (after Evci et al. 2022) for Linear -> Linear: units whose fan-out gradient is large.

    With the fan-out zero, the loss gradient w.r.t. its column j is ``G^T a_j``: G the consumer's
    output gradients on the probe batch, ``a_j = path(x u_j + c_j)`` unit j's activity. The pool of
    candidate units: draws from the layer's own initialisation (uniform in 1/sqrt(fan-in)) and, with
    bias 0, both signs of the top right-singular vectors of ``G^T X`` (GradMax's answer when the
    path is linear), at the draws' mean norm. The activity goes through the real path, so the choice
    holds for ReLU too; ``_diverse_top`` picks k of them greedily. Returns False (the compiled
    fan-in stays) where it does not apply: conv layers, a Linear after feature maps.
    """
    op = seed.op
    if not isinstance(op, nn.Linear) or not isinstance(consumer.layer, nn.Linear) or consumer.columns_per_unit != 1:
        return False
    (g,) = torch.autograd.grad(loss, captured["out"])
    x = captured["x"].flatten(1).detach()
    g = g.detach().flatten(1)
    fan_in, k = x.shape[1], op.out_features
    bound = 1.0 / fan_in ** 0.5  # nn.Linear's initialisation: weight and bias uniform in +-bound
    generator = torch.Generator().manual_seed(0)
    draws = max(GRADMAX_CANDIDATES, 4 * k)
    weights = ((torch.rand(draws, fan_in, generator=generator) * 2 - 1) * bound).to(x)
    biases = ((torch.rand(draws, generator=generator) * 2 - 1) * bound).to(x)
    _, _, vh = torch.linalg.svd(g.T @ x, full_matrices=False)
    directions = vh * weights.norm(dim=1).mean()
    weights = torch.cat([weights, directions, -directions])
    biases = torch.cat([biases, torch.zeros(2 * directions.shape[0]).to(x)])
    if op.bias is None:
        biases = torch.zeros_like(biases)
    with torch.no_grad():
        activity = x @ weights.T + biases
        for module in consumer.between:
            activity = module(activity)
        best = _diverse_top(g, activity, k)
        op.weight.copy_(weights[best])
        if op.bias is not None:
            op.bias.copy_(biases[best])
    return True


def _diverse_top(g: torch.Tensor, activity: torch.Tensor, k: int) -> torch.Tensor:
    """k candidates, greedily: the largest fan-out gradient of what the chosen units do not already do.

    After each pick its activity (over the probe batch) is projected out of the rest, so k copies of
    one good unit (which the plain top-k would pick: the objective is a sum over units) score low.
    """
    rest = activity.clone()
    chosen: list[int] = []
    for _ in range(k):
        score = (g.T @ rest).norm(dim=0)
        if chosen:
            score[chosen] = -1.0
        pick = int(score.argmax())
        chosen.append(pick)
        direction = rest[:, pick] / rest[:, pick].norm().clamp_min(1e-12)
        rest = rest - direction.unsqueeze(1) * (direction @ rest).unsqueeze(0)
    return torch.tensor(chosen, device=activity.device)


def _grow(layer: Layer, *, rows: torch.Tensor | None = None, bias: torch.Tensor | None = None,
          columns: torch.Tensor | None = None) -> None:
    """Append output rows (and bias) or input columns to a layer's weight: new Parameters, new sizes."""
    with torch.no_grad():
        if rows is not None:
            layer.weight = nn.Parameter(torch.cat([layer.weight, rows.to(layer.weight)], 0))
            if layer.bias is not None and bias is not None:
                layer.bias = nn.Parameter(torch.cat([layer.bias, bias.to(layer.bias)], 0))
        if columns is not None:
            layer.weight = nn.Parameter(torch.cat([layer.weight, columns.to(layer.weight)], 1))
    if isinstance(layer, nn.Linear):
        layer.out_features, layer.in_features = layer.weight.shape
    else:
        layer.out_channels, layer.in_channels = layer.weight.shape[:2]


def widen(producer: SeedSlot, consumer: NextLayer, rows: torch.Tensor, bias: torch.Tensor | None,
          columns: torch.Tensor) -> None:
    """Make the new units part of the host: rows of the producer, columns of the consumer; shapes follow."""
    added = rows.shape[0]
    _grow(producer.host, rows=rows, bias=bias)
    _grow(consumer.layer, columns=columns)
    if producer.output_shape is not None:
        producer.output_shape[0] += added
    producer.health.reset()
    if consumer.slot is not None:
        if consumer.slot.input_shape is not None:
            consumer.slot.input_shape[0] += added * consumer.columns_per_unit
        consumer.slot.health.reset()


def merge_width(link: WidthLink) -> None:
    """FOSSILIZED: the units become the host's; at alpha 1 the merged host computes what the seed did."""
    op = link.seed.op
    link.remove()
    widen(link.producer, link.consumer, op.weight.detach(), None if op.bias is None else op.bias.detach(),
          link.seed.fan_out.detach())


def widen_for_resume(model: nn.Module, producer: SeedSlot, arch: BlueprintArchitecture) -> None:
    """Give the host the shapes a merged width seed left (zeros; the checkpoint's weights fill them)."""
    assert arch.kind == WIDTH
    consumer = find_consumer(model, producer)
    units = arch.layers[0].width or 0
    host = producer.host
    rows = torch.zeros(units, *host.weight.shape[1:])
    bias = None if host.bias is None else torch.zeros(units)
    widen(producer, consumer, rows, bias, torch.zeros(_fan_out_shape(consumer, units)))
