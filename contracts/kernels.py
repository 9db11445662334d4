"""Compiled kernels and their characterisation."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from contracts._base import Contract, UtcDatetime, utc_now
from contracts.assets import BlueprintArchitecture
from contracts.blueprint_ir import MAX_DIM, MAX_RANK
from contracts.enums import CompilationOutcome, KernelStatus

SHA256_PATTERN = r"^[0-9a-f]{64}$"
# 'inline' (the bytes travel in ``artifact``) or the sha256 naming a file of the blob folder; nothing
# else, so a reference can never name a path of its own (``blob:/dev/zero``, ``blob:../..``).
BINARY_REF_PATTERN = r"^(inline|blob:[0-9a-f]{64})$"


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

    @field_validator("input_shape", "output_shape")
    @classmethod
    def _bounded_shape(cls, shape: list[int]) -> list[int]:
        if not 1 <= len(shape) <= MAX_RANK or not all(1 <= d <= MAX_DIM for d in shape):
            raise ValueError(f"a kernel shape has 1 to {MAX_RANK} dimensions of 1 to {MAX_DIM:,}")
        return shape


class CompiledKernel(Contract):
    """Library entry of a kernel: the record of the compacted ``library.kernels`` topic."""

    kernel_id: str = Field(min_length=1, max_length=80)
    blueprint_id: str = Field(min_length=1, max_length=80)
    # The description is the Avro doc (schemas must not change); the pattern says what a blob path is.
    binary_ref: str = Field(pattern=BINARY_REF_PATTERN, description="Where the artifact lives: 'inline' or a blob path")
    metadata: KernelMetadata
    status: KernelStatus = KernelStatus.VALIDATED
    artifact: bytes | None = Field(default=None, description="Weights-only artifact when stored inline")
    validation_results: dict[str, float] = Field(default_factory=dict)
    deployment_stats: dict[str, float] = Field(default_factory=dict)
    created_at: UtcDatetime = Field(default_factory=utc_now)
    last_used_at: UtcDatetime | None = None
    # Added in schema v2: the IR travels with the artifact, so loading needs no other lookup.
    architecture: BlueprintArchitecture | None = None

    @model_validator(mode="after")
    def _artifact_where_the_ref_says(self) -> CompiledKernel:
        if (self.binary_ref == "inline") != (self.artifact is not None):
            raise ValueError("an 'inline' kernel carries its artifact, a 'blob:' kernel carries none")
        return self


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
