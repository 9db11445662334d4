"""Compiled kernels and their characterisation."""

from __future__ import annotations

from pydantic import Field

from contracts._base import Contract, UtcDatetime, utc_now
from contracts.assets import BlueprintArchitecture
from contracts.enums import CompilationOutcome, KernelStatus

SHA256_PATTERN = r"^[0-9a-f]{64}$"


class KernelMetadata(Contract):
    kernel_id: str = Field(min_length=1, max_length=80)
    blueprint_id: str = Field(min_length=1, max_length=80)
    name: str = Field(min_length=1, max_length=255)
    input_shape: list[int] = Field(description="No batch dimension")
    output_shape: list[int] = Field(description="No batch dimension")
    parameter_count: int = Field(ge=0)
    device_requirements: list[str] = Field(default_factory=list)
    memory_footprint_mb: float = Field(ge=0)
    compilation_target: str = Field(default="torch-eager", max_length=100)
    optimization_flags: dict[str, str] = Field(default_factory=dict)
    performance_profile: dict[str, float] = Field(default_factory=dict)
    compatibility_version: str = Field(default="1", max_length=50)
    created_at: UtcDatetime = Field(default_factory=utc_now)
    checksum: str = Field(pattern=SHA256_PATTERN, description="sha256 of the weights-only artifact")


class CompiledKernel(Contract):
    """Library entry of a kernel: the record of the compacted ``library.kernels`` topic."""

    kernel_id: str = Field(min_length=1, max_length=80)
    blueprint_id: str = Field(min_length=1, max_length=80)
    binary_ref: str = Field(description="Where the artifact lives: 'inline' or a blob path")
    metadata: KernelMetadata
    status: KernelStatus = KernelStatus.VALIDATED
    artifact: bytes | None = Field(default=None, description="Weights-only artifact when stored inline")
    validation_results: dict[str, float] = Field(default_factory=dict)
    deployment_stats: dict[str, float] = Field(default_factory=dict)
    created_at: UtcDatetime = Field(default_factory=utc_now)
    last_used_at: UtcDatetime | None = None
    # Added in schema v2: the IR travels with the artifact, so loading needs no other lookup.
    architecture: BlueprintArchitecture | None = None


class KernelReady(Contract):
    """Tezzeret's answer to a submission: a kernel, or the reason there is none."""

    blueprint_id: str = Field(min_length=1, max_length=80)
    outcome: CompilationOutcome
    kernel: KernelMetadata | None = None
    failure_reason: str | None = Field(default=None, max_length=2000)
    compile_seconds: float = Field(default=0.0, ge=0)


class KernelCharacterized(Contract):
    kernel_id: str = Field(min_length=1, max_length=80)
    blueprint_id: str = Field(min_length=1, max_length=80)
    device: str = Field(min_length=1, max_length=50)
    latency_ms_p50: float = Field(ge=0)
    latency_ms_p95: float = Field(ge=0)
    peak_memory_mb: float = Field(ge=0)
    tags: list[str] = Field(default_factory=list)
    passed: bool
    failure_reason: str | None = None
