"""The check every builder runs before allocating: IR limits and shapes, from the analytic plan (no torch).

Tezzeret, Karn, Tolaria's kernel loading and Urabrask all reach it, through ``build_module``
or directly; the limits themselves are documented in ``contracts/blueprint_ir.py``.
"""

from __future__ import annotations

from contracts import BlueprintArchitecture
from contracts.blueprint_ir import IRPlan, plan, resource_problems
from services.core.errors import EsperError


class BlueprintError(EsperError, ValueError):
    """A blueprint that cannot be built for the slot it targets."""


def check_buildable(arch: BlueprintArchitecture) -> IRPlan:
    """The analytic plan of ``arch``, or BlueprintError with the reason, before anything is allocated.

    The contract already refuses out-of-bounds IR at decode; this checks again for IR that
    reached us another way (a checkpoint, a file, a ``model_construct``) and for shapes that
    do not fit, so nothing but a BlueprintError leaves the builder for a bad blueprint.
    """
    problems = resource_problems(arch)
    if problems:
        raise BlueprintError("blueprint IR out of bounds: " + "; ".join(problems))
    planned = plan(arch)
    if planned.problem is not None:
        raise BlueprintError(planned.problem)
    return planned
