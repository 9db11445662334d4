"""Starter blueprints for Linear and Conv2d slots (Karn's seed library; also used by tests and demos)."""

from __future__ import annotations

from contracts import Blueprint, BlueprintArchitecture, BlueprintOp, OpSpec


def _bp(name: str, description: str, in_shape: list[int], out_shape: list[int], ops: list[OpSpec]) -> Blueprint:
    return Blueprint(
        name=name, description=description, created_by="karn",
        architecture=BlueprintArchitecture(input_shape=in_shape, output_shape=out_shape, layers=ops),
    )


def mlp_adapter(in_features: int, out_features: int, hidden: int = 32) -> Blueprint:
    """A two-layer side path: the classic capacity-adding seed for a Linear slot."""
    return _bp(
        f"mlp-{in_features}-{hidden}-{out_features}",
        f"Linear({in_features},{hidden}) + ReLU + Linear -> {out_features}",
        [in_features],
        [out_features],
        [
            OpSpec(op=BlueprintOp.LINEAR, width=hidden),
            OpSpec(op=BlueprintOp.RELU),
            OpSpec(op=BlueprintOp.LINEAR, width=out_features),
        ],
    )


def linear_residual(in_features: int, out_features: int, bottleneck: int = 8) -> Blueprint:
    return _bp(
        f"lin-bneck-{in_features}-{bottleneck}-{out_features}", "Linear projection with a bottleneck adapter",
        [in_features], [out_features],
        [OpSpec(op=BlueprintOp.LINEAR, width=out_features), OpSpec(op=BlueprintOp.BOTTLENECK, width=bottleneck)],
    )


def conv_adapter(in_shape: list[int], out_shape: list[int], hidden: int = 16, kernel_size: int = 3) -> Blueprint:
    return _bp(
        f"conv-{in_shape[0]}-{hidden}-{out_shape[0]}-k{kernel_size}", "Conv + GELU + 1x1 conv side path",
        in_shape, out_shape,
        [OpSpec(op=BlueprintOp.CONV2D, width=hidden, kernel_size=kernel_size), OpSpec(op=BlueprintOp.GELU),
         OpSpec(op=BlueprintOp.CONV2D, width=out_shape[0], kernel_size=1)],
    )


WIDTH_UNITS = (16, 32)  # the width seeds offered per slot: units added to the layer (a few units barely help)


def for_slot(input_shape: list[int], output_shape: list[int]) -> list[Blueprint]:
    """Starter blueprints that fit a slot of these shapes: side branches, width seeds (``WIDTH_UNITS`` new
    units of the layer; for a conv layer only where it keeps the spatial size: a 3x3 fan-in with padding 1)
    and a depth block after it."""
    if len(input_shape) == 1:
        branches = [mlp_adapter(input_shape[0], output_shape[0], h) for h in (16, 32, 64)] + [
            linear_residual(input_shape[0], output_shape[0])
        ]
    else:
        branches = [conv_adapter(input_shape, output_shape, h) for h in (8, 16)]
    keeps_size = len(input_shape) == 1 or input_shape[1:] == output_shape[1:]
    widths = [width_units(input_shape, output_shape, k) for k in WIDTH_UNITS] if keeps_size else []
    return [*branches, *widths, depth_block(output_shape)]


def widened_slot(blueprint: Blueprint) -> tuple[list[int], list[int]] | None:
    """The shapes of a width seed's slot once the seed is fossilized (its units merged into the layer)."""
    arch = blueprint.architecture
    if arch.kind != "width" or not arch.layers or not arch.layers[0].width:
        return None
    return list(arch.input_shape), [arch.output_shape[0] + arch.layers[0].width, *arch.output_shape[1:]]


def width_units(in_shape: list[int], out_shape: list[int], units: int = 8, kernel_size: int = 3) -> Blueprint:
    """A width seed: ``units`` new units of the layer (their fan-in; Kasmina adds the zero fan-out).

    For a conv layer the fan-in must have the layer's kernel size (and padding ``kernel_size // 2``).
    """
    op = OpSpec(op=BlueprintOp.LINEAR, width=units) if len(in_shape) == 1 else \
        OpSpec(op=BlueprintOp.CONV2D, width=units, kernel_size=kernel_size)
    return Blueprint(
        name=f"width-{in_shape[0]}-{out_shape[0]}+{units}", description=f"{units} new units of the layer",
        created_by="karn", architecture=BlueprintArchitecture(
            input_shape=in_shape, output_shape=out_shape, layers=[op], kind="width"),
    )


def depth_block(shape: list[int], hidden: int | None = None) -> Blueprint:
    """A depth seed: ``y + up(relu(down(y)))`` after the layer, ``up`` built zero (the identity at first)."""
    width = hidden or shape[0]
    if len(shape) == 1:
        ops = [OpSpec(op=BlueprintOp.LINEAR, width=width), OpSpec(op=BlueprintOp.RELU),
               OpSpec(op=BlueprintOp.LINEAR, width=shape[0])]
    else:
        ops = [OpSpec(op=BlueprintOp.CONV2D, width=width, kernel_size=3), OpSpec(op=BlueprintOp.RELU),
               OpSpec(op=BlueprintOp.CONV2D, width=shape[0], kernel_size=1)]
    return Blueprint(
        name=f"depth-{shape[0]}-{width}", description=f"a residual block of inner width {width} after the layer",
        created_by="karn", architecture=BlueprintArchitecture(
            input_shape=shape, output_shape=shape, layers=ops, kind="depth"),
    )
