"""Blueprint IR limits and the analytic plan of a blueprint: shapes, parameters, activation memory.

The one place that says how big a blueprint may be. Every figure here is computed from
the IR alone, never by building modules, so a blueprint is judged before anything is
allocated:

- in the contract (``BlueprintArchitecture``'s validator): an out-of-bounds blueprint is a
  ``ContractViolationError`` at decode and is dead-lettered, never compiled;
- again before any module is built (``services.blueprints.modules.build_module``, used by
  Tezzeret, Karn, Tolaria's kernel loading and Urabrask), where a structural problem (a
  shape that does not fit) becomes a ``BlueprintError`` with the reason.

Limits (generous for every starter blueprint, example and test; see tests/unit/test_blueprint_limits.py):

=========================  ===========  ==================================================
MAX_DIM                    65,536       any dimension, width, channel count, height, width
MAX_RANK                   3            ``[features]`` or ``[C, H, W]`` (no batch dimension)
MAX_OPS                    64           ops in ``layers`` (residual markers included)
MAX_DEPTH                  8            residual markers: each nests the ops before it
MAX_PARAMETERS             16,777,216   parameters (64 MiB of float32); Tezzeret's budget is lower
MAX_ACTIVATION_BYTES       32 MiB       activations of ONE sample in a forward pass (float32,
                                        attention scores included); probes multiply by their batch
=========================  ===========  ==================================================

Seed kinds (``BlueprintArchitecture.kind``): ``None`` is a side branch, ``y = host(x) + a * kernel(x)``,
mapping the slot's input shape to its output shape. ``"width"`` adds units to the layer: its one
op (``linear`` or ``conv2d``, ``width`` = the number of units) is their fan-in, from the slot's
input to ``[units]`` (``[units, H, W]``); ``output_shape`` is the layer's, and the fan-out into
the consumer layer is made by Kasmina, which knows the host. ``"depth"`` inserts a block after
the layer: ``y + a * block(y)`` from the layer's output shape to itself, its last op a ``linear``
or ``conv2d`` that is built zero, so the block is the identity when it is inserted.

The plan mirrors ``services/blueprints/modules.py`` op by op (a test checks that the
analytic parameter count equals the built module's for every op and every starter).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from contracts.enums import BlueprintOp

MAX_DIM = 65_536
MAX_RANK = 3
MAX_OPS = 64
MAX_DEPTH = 8
MAX_PARAMETERS = 16 * 2**20
MAX_ACTIVATION_BYTES = 32 * 2**20
FLOAT_BYTES = 4
WIDTH = "width"
DEPTH = "depth"
SEED_KINDS = (WIDTH, DEPTH)


class _Op(Protocol):
    op: BlueprintOp
    width: int | None
    kernel_size: int | None
    heads: int | None


class _Architecture(Protocol):
    # Read-only: a mutable protocol attribute would be invariant, and no list of a concrete op type would fit.
    @property
    def input_shape(self) -> list[int]: ...
    @property
    def output_shape(self) -> list[int]: ...
    @property
    def layers(self) -> Sequence[_Op]: ...
    @property
    def kind(self) -> str | None: ...


@dataclass(frozen=True)
class OpPlan:
    """One op as it will be built: resolved arguments, shapes, and what it costs."""

    index: int
    op: BlueprintOp
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    width: int = 0
    kernel_size: int = 0
    stride: int = 1
    heads: int = 0
    parameters: int = 0
    activation_elements: int = 0


@dataclass
class IRPlan:
    """The ops that could be planned; ``problem`` is the first structural error (where planning stopped)."""

    steps: list[OpPlan] = field(default_factory=list)
    input_elements: int = 0
    problem: str | None = None
    final_shape: tuple[int, ...] = ()

    @property
    def parameters(self) -> int:
        return sum(s.parameters for s in self.steps)

    @property
    def activation_bytes(self) -> int:
        """Per sample: the input plus every intermediate the forward pass keeps (float32)."""
        return FLOAT_BYTES * (self.input_elements + sum(s.activation_elements for s in self.steps))


def _numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


def _shape_problem(name: str, shape: Sequence[int]) -> str | None:
    if not 1 <= len(shape) <= MAX_RANK:
        return f"{name} has {len(shape)} dimensions, at most {MAX_RANK} are allowed"
    bad = [d for d in shape if not 1 <= d <= MAX_DIM]
    if bad:
        return f"{name} {list(shape)}: every dimension must be between 1 and {MAX_DIM:,}"
    return None


def shape_problems(arch: _Architecture) -> list[str]:
    """Bounds that need no planning: ranks, dimensions, op counts, residual depth, op widths."""
    problems = [p for p in (_shape_problem("input_shape", arch.input_shape),
                            _shape_problem("output_shape", arch.output_shape)) if p]
    if arch.kind is not None and arch.kind not in SEED_KINDS:
        problems.append(f"kind {arch.kind[:20]!r} is not a seed kind ({', '.join(SEED_KINDS)} or none)")
    if len(arch.layers) > MAX_OPS:
        problems.append(f"{len(arch.layers)} ops, at most {MAX_OPS} are allowed")
    depth = sum(1 for op in arch.layers if op.op == BlueprintOp.RESIDUAL)
    if depth > MAX_DEPTH:
        problems.append(f"{depth} residual ops nest {depth} deep, at most {MAX_DEPTH} are allowed")
    for i, op in enumerate(arch.layers):
        if op.width is not None and not 1 <= op.width <= MAX_DIM:
            problems.append(f"op {i} ({op.op.value}): width {op.width} is not between 1 and {MAX_DIM:,}")
    return problems


def _spatial_stride(in_shape: Sequence[int], out_shape: Sequence[int]) -> int:
    if len(in_shape) != 3 or len(out_shape) != 3 or out_shape[1] >= in_shape[1]:
        return 1
    return max(1, math.ceil(in_shape[1] / out_shape[1]))


def _plan_op(i: int, op: _Op, shape: tuple[int, ...], target: Sequence[int], first_conv: bool) -> OpPlan | str:
    """The plan of one op, or the reason it cannot be built on ``shape``."""
    kind, numel = op.op, _numel(shape)
    if kind == BlueprintOp.LINEAR:
        if len(shape) != 1:
            return f"linear needs a vector input, got shape {list(shape)}"
        width = op.width or target[0]
        return OpPlan(i, kind, shape, (width,), width=width, parameters=shape[0] * width + width,
                      activation_elements=width)
    if kind == BlueprintOp.CONV2D:
        if len(shape) != 3:
            return f"conv2d needs a [C, H, W] input, got shape {list(shape)}"
        width, k = op.width or target[0], op.kernel_size or 3
        stride = _spatial_stride(shape, target) if first_conv else 1
        h = (shape[1] + 2 * (k // 2) - k) // stride + 1
        w = (shape[2] + 2 * (k // 2) - k) // stride + 1
        out = (width, h, w)
        return OpPlan(i, kind, shape, out, width=width, kernel_size=k, stride=stride,
                      parameters=shape[0] * width * k * k + width, activation_elements=_numel(out))
    if len(shape) not in (1, 3):
        return f"{kind.value} needs a [features] or [C, H, W] input, got shape {list(shape)}"
    if kind in (BlueprintOp.LAYER_NORM, BlueprintOp.BATCH_NORM):
        return OpPlan(i, kind, shape, shape, parameters=2 * shape[0], activation_elements=numel)
    if kind in (BlueprintOp.RELU, BlueprintOp.GELU, BlueprintOp.TANH):
        return OpPlan(i, kind, shape, shape, activation_elements=numel)
    if kind == BlueprintOp.BOTTLENECK:
        width = op.width or max(1, shape[0] // 4)
        inner = numel // shape[0] * width
        # down + relu (inner), up + the residual sum (outer)
        return OpPlan(i, kind, shape, shape, width=width, parameters=2 * shape[0] * width + width + shape[0],
                      activation_elements=2 * inner + 2 * numel)
    if kind == BlueprintOp.ATTENTION_LITE:
        heads = op.heads or 1
        if shape[0] % heads:
            unit = "features do not split into" if len(shape) == 1 else "channels do not split into"
            return f"attention_lite: {shape[0]} {unit} {heads} {'tokens' if len(shape) == 1 else 'heads'}"
        if len(shape) == 1:
            tokens, dim, score_heads = heads, shape[0] // heads, 1
        else:
            tokens, dim, score_heads = shape[1] * shape[2], shape[0], heads
        # q, k, v, the attended values and the residual sum, plus one tokens x tokens score matrix per head
        return OpPlan(i, kind, shape, shape, heads=heads, parameters=4 * dim * dim + 4 * dim,
                      activation_elements=5 * numel + score_heads * tokens * tokens)
    return f"op {kind!r} is not in the whitelist"  # pragma: no cover - the enum is closed


def seed_output_shape(arch: _Architecture) -> list[int]:
    """The shape the kernel module produces: the new units for a width seed, else ``output_shape``."""
    if arch.kind == WIDTH and arch.layers and arch.layers[0].width is not None:
        return [arch.layers[0].width, *arch.output_shape[1:]]
    return list(arch.output_shape)


def _kind_problem(arch: _Architecture) -> str | None:
    if arch.kind == WIDTH:
        ops = arch.layers
        if len(ops) != 1 or ops[0].op not in (BlueprintOp.LINEAR, BlueprintOp.CONV2D) or ops[0].width is None:
            return "a width seed is one linear or conv2d op with its width (the number of new units)"
        if len(arch.input_shape) != len(arch.output_shape):
            return f"a width seed maps a layer's input to its units: {arch.input_shape} -> {arch.output_shape}"
    if arch.kind == DEPTH:
        if list(arch.input_shape) != list(arch.output_shape):
            return f"a depth block maps the layer's output to itself, not {arch.input_shape} -> {arch.output_shape}"
        if not arch.layers or arch.layers[-1].op not in (BlueprintOp.LINEAR, BlueprintOp.CONV2D):
            return "a depth block ends in a linear or conv2d op (built zero, so the block starts as the identity)"
    return None


def plan(arch: _Architecture) -> IRPlan:
    """Walk the ops as ``build_module`` will, without building anything (call after ``shape_problems``)."""
    result = IRPlan(input_elements=_numel(arch.input_shape))
    result.problem = _kind_problem(arch)
    if result.problem is not None:
        return result
    shape, target = tuple(arch.input_shape), seed_output_shape(arch)
    first_conv = True
    for i, op in enumerate(arch.layers):
        if op.op == BlueprintOp.RESIDUAL:
            if list(shape) != list(arch.input_shape):
                result.problem = f"residual at op {i}: shape {list(shape)} differs from the input {arch.input_shape}"
                break
            result.steps.append(OpPlan(i, op.op, shape, shape, activation_elements=_numel(shape)))
            continue
        step = _plan_op(i, op, shape, target, first_conv)
        if isinstance(step, str):
            result.problem = step
            break
        if op.op == BlueprintOp.CONV2D:
            first_conv = False
        if any(not 1 <= d <= MAX_DIM for d in step.out_shape):
            result.problem = f"op {i} ({op.op.value}) produces shape {list(step.out_shape)} outside 1..{MAX_DIM:,}"
            break
        result.steps.append(step)
        shape = step.out_shape
    result.final_shape = shape
    if result.problem is None and list(shape) != target:
        result.problem = f"blueprint produces shape {list(shape)}, the {arch.kind or 'slot'} needs {target}"
    return result


def resource_problems(arch: _Architecture) -> list[str]:
    """Every bound the IR breaks (empty when within limits); structural errors are not resource problems.

    What cannot be planned (the ops after a structural error) is never built either, so the
    costs of the planned prefix are what a build would allocate.
    """
    problems = shape_problems(arch)
    if problems:
        return problems
    planned = plan(arch)
    if planned.parameters > MAX_PARAMETERS:
        problems.append(f"{planned.parameters:,} parameters exceed the IR limit of {MAX_PARAMETERS:,}")
    if planned.activation_bytes > MAX_ACTIVATION_BYTES:
        problems.append(f"{planned.activation_bytes / 2**20:,.1f} MiB of activations per sample exceed the IR "
                        f"limit of {MAX_ACTIVATION_BYTES / 2**20:g} MiB")
    return problems
