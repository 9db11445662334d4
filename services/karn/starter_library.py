"""The slot shapes Karn seeds its library for, and the blueprints it starts from."""

from __future__ import annotations

from contracts import Blueprint
from services.blueprints.starter import for_slot, widened_slot

# (input shape, output shape) of the slots in examples/ (every run config's, tested) and common small layers.
DEFAULT_SLOTS: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] = (
    ((2,), (8,)),
    ((6,), (4,)),
    ((64,), (16,)),
    ((16,), (10,)),
    ((128,), (128,)),
    ((1, 8, 8), (4, 8, 8)),
    ((4, 8, 8), (8, 8, 8)),
    ((1, 8, 8), (16, 8, 8)),
)


def parse_slot(text: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """'64:16' (Linear) or '1x8x8:4x8x8' (Conv2d)."""
    try:
        left, right = text.split(":")
        return tuple(int(v) for v in left.split("x")), tuple(int(v) for v in right.split("x"))
    except ValueError:
        raise ValueError(f"slot {text!r} must look like 64:16 or 1x8x8:4x8x8") from None


def starter_library(slots=DEFAULT_SLOTS, widened: bool = False) -> list[Blueprint]:
    """The starter blueprints of ``slots``; with ``widened``, also those of every slot a width seed of one of them
    makes once it fossilizes (what Karn would offer only after that fossil: ``KarnGenerator``'s field reports)."""
    library: dict[str, Blueprint] = {}
    for in_shape, out_shape in slots:
        for bp in for_slot(list(in_shape), list(out_shape)):
            library.setdefault(bp.blueprint_id, bp)
    if widened:
        shapes = [widened_slot(bp) for bp in library.values()]
        grown = sorted({(tuple(i), tuple(o)) for i, o in filter(None, shapes)})
        for bp in starter_library(grown):
            library.setdefault(bp.blueprint_id, bp)
    return list(library.values())
