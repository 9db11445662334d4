"""Blueprint submissions that used to crash Tezzeret, built without validation (as a plain producer could)."""

from __future__ import annotations

from contracts import BlueprintArchitecture, BlueprintSubmitted, OpSpec
from services.blueprints.starter import mlp_adapter


def _forced(in_shape, out_shape, ops, blueprint_id: str | None = None) -> BlueprintSubmitted:
    """A submission whose architecture skips validation; its id is its content hash unless given."""
    arch = BlueprintArchitecture.model_construct(ir_version=1, input_shape=in_shape, output_shape=out_shape,
                                                 layers=[OpSpec(**op) for op in ops])
    good = mlp_adapter(4, 4, 8)
    bp_id = blueprint_id or "bp-" + arch.content_hash()[:32]
    bp = good.model_copy(update={"architecture": arch, "blueprint_id": bp_id, "name": "poison"})
    return BlueprintSubmitted.model_construct(blueprint_id=bp_id, submitted_by="tests", blueprint=bp)


def out_of_bounds() -> dict[str, BlueprintSubmitted]:
    """The issue's crash-loop inputs. On the code before the IR limits, ``width 1e9`` allocated 16 GB:
    to see these fail there, leave that one out (records of several partitions come in any order)."""
    return {
        "negative dimension": _forced([-4], [4], [dict(op="linear", width=4)]),
        "[1, 1000000, 1000000]": _forced([1, 1_000_000, 1_000_000], [1, 1_000_000, 1_000_000], [dict(op="relu")]),
        "600 residual ops": _forced([8], [8], [dict(op="relu")] + [dict(op="residual")] * 600),
        "width 1e9": _forced([4], [4], [dict(op="linear", width=1_000_000_000), dict(op="relu"),
                                        dict(op="linear", width=4)]),
    }


def claiming(blueprint_id: str) -> BlueprintSubmitted:
    """A failing blueprint (it produces [5] for an [8] slot) that claims another blueprint's id."""
    return _forced([2], [8], [dict(op="linear", width=5)], blueprint_id=blueprint_id)
