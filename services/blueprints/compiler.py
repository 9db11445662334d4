"""Blueprint -> validated kernel: build, check shapes and finiteness, budget, weights-only artifact.

The pure core of Tezzeret: no Kafka here.
"""

from __future__ import annotations

import time

import torch

from contracts import Blueprint, CompiledKernel, KernelMetadata, KernelStatus
from contracts.assets import blueprint_id_for
from contracts.blueprint_ir import seed_output_shape
from services.blueprints.artifacts import kernel_id_for, probe, save_artifact, sha256_hex
from services.blueprints.modules import BlueprintError, build_module, check_buildable, parameter_count

DEFAULT_MAX_PARAMETERS = 2_000_000
PROBE_BATCH = 8


def compile_blueprint(bp: Blueprint, *, init_seed: int = 0, max_parameters: int = DEFAULT_MAX_PARAMETERS
                      ) -> tuple[CompiledKernel, float]:
    """Compile and validate; raises BlueprintError with the reason when the blueprint fails.

    Nothing else escapes for a bad blueprint: the budget is checked on the analytic plan before
    any weight is allocated, and a probe that raises is the blueprint failing its probe.
    """
    start = time.perf_counter()
    if bp.blueprint_id != blueprint_id_for(bp.architecture):  # only a copy made without validation can differ
        raise BlueprintError(f"blueprint_id {bp.blueprint_id} is not the content hash of its architecture")
    planned = check_buildable(bp.architecture)
    if planned.parameters > max_parameters:
        raise BlueprintError(f"{planned.parameters:,} parameters exceed the budget of {max_parameters:,}")
    torch.manual_seed(init_seed)
    module = build_module(bp.architecture)
    count = parameter_count(module)
    try:
        out = probe(module, bp.architecture.input_shape, batch=PROBE_BATCH)
    except (RuntimeError, ValueError) as exc:  # torch reports shape and memory failures as these
        raise BlueprintError(
            f"probe failed: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"
        ) from None
    expected = seed_output_shape(bp.architecture)  # a width seed's module makes its new units
    if list(out.shape[1:]) != expected:
        raise BlueprintError(f"probe output shape {list(out.shape[1:])} != {expected}")
    if not bool(torch.isfinite(out).all()):
        raise BlueprintError("probe output is not finite")
    artifact = save_artifact(module, bp.blueprint_id)
    kernel_id = kernel_id_for(artifact)
    metadata = KernelMetadata(
        kernel_id=kernel_id, blueprint_id=bp.blueprint_id, name=bp.name,
        input_shape=list(bp.architecture.input_shape), output_shape=list(bp.architecture.output_shape),
        parameter_count=count, device_requirements=["cpu"], memory_footprint_mb=len(artifact) / 2**20,
        optimization_flags={"dtype": "float32", "init_seed": str(init_seed)},
        checksum=sha256_hex(artifact),
    )
    kernel = CompiledKernel(
        kernel_id=kernel_id, blueprint_id=bp.blueprint_id, binary_ref="inline", metadata=metadata,
        status=KernelStatus.VALIDATED, artifact=artifact,
        validation_results={"probe_finite": 1.0, "parameters": float(count)},
        architecture=bp.architecture,
    )
    return kernel, time.perf_counter() - start
