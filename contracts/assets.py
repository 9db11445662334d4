"""Long-lived assets: seeds, blueprints and training sessions."""

from __future__ import annotations

import hashlib
import json
import uuid

from pydantic import AliasChoices, Field, model_validator

from contracts._base import Contract, UtcDatetime, utc_now
from contracts.blueprint_ir import resource_problems
from contracts.enums import BlueprintOp, BlueprintState, SeedState, SessionStatus
from contracts.seed_identity import SeedId


class SeedSlotRef(Contract):
    """Fields naming one seed slot; ``seed_id`` is the ``(layer_id, seed_idx)`` identity."""

    layer_id: int = Field(ge=0, description="Stable id of the host layer (layer_id_for_path)")
    seed_idx: int = Field(ge=0, description="Index of the seed within its layer")

    @property
    def seed_id(self) -> SeedId:
        return SeedId(layer_id=self.layer_id, seed_idx=self.seed_idx)


class Seed(SeedSlotRef):
    """A seed slot inside a host layer. ``position`` is the original name of ``seed_idx``."""

    # The plugin cannot type __init__ through AliasChoices; both names stay accepted on purpose.
    seed_idx: int = Field(  # type: ignore[pydantic-alias]
        ge=0,
        validation_alias=AliasChoices("seed_idx", "position"),
        description="Index of the seed within its layer (the original 'position')",
    )
    layer_name: str = Field(default="", max_length=255, description="Module path of the host layer")
    state: SeedState = SeedState.DORMANT
    blueprint_id: str | None = None
    created_at: UtcDatetime = Field(default_factory=utc_now)
    updated_at: UtcDatetime = Field(default_factory=utc_now)
    metadata: dict[str, str] = Field(default_factory=dict)

    @property
    def position(self) -> int:
        return self.seed_idx

    def state_display(self) -> str:
        return self.state.value.title()

    def is_active(self) -> bool:
        return self.state in (SeedState.TRAINING, SeedState.GRAFTING)


class OpSpec(Contract):
    """One whitelisted operation of a blueprint; only the fields its op uses are set."""

    op: BlueprintOp
    width: int | None = Field(default=None, ge=1, description="Output features/channels, or inner width")
    kernel_size: int | None = Field(default=None, ge=1, le=7)
    heads: int | None = Field(default=None, ge=1, le=16)


class BlueprintArchitecture(Contract):
    """Declarative sub-network: a sequence of whitelisted ops with a shape contract.

    Shapes exclude the batch dimension. Nothing in here is ever executed as code.
    """

    ir_version: int = Field(default=1, ge=1)
    input_shape: list[int] = Field(min_length=1)
    output_shape: list[int] = Field(min_length=1)
    layers: list[OpSpec] = Field(min_length=1)
    # Added in schema v2 (BlueprintSubmitted; CompiledKernel v3). None: a side branch added to the
    # layer's output. "width": the one op is the fan-in of new units of the layer; "depth": a
    # block inserted after the layer, identity at germination. See ``contracts.blueprint_ir``.
    kind: str | None = Field(default=None, max_length=20, description="Seed kind: none (side branch), width, depth")

    @model_validator(mode="after")
    def _within_ir_limits(self) -> BlueprintArchitecture:
        # Judged from the IR alone (contracts/blueprint_ir.py): nothing is allocated to find out.
        problems = resource_problems(self)
        if problems:
            raise ValueError("blueprint IR out of bounds: " + "; ".join(problems))
        return self

    def content_hash(self) -> str:
        """sha256 of the canonical JSON of the IR: the content address behind ``blueprint_id``.

        A field added to the IR later must be left out of this JSON at its default, or every
        blueprint id already on the log would stop matching its content.
        """
        unset = {"kind"} if self.kind is None else set()
        canonical = json.dumps(self.model_dump(mode="json", exclude=unset), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def blueprint_id_for(architecture: BlueprintArchitecture) -> str:
    """A blueprint's id is derived from its content, so no record can claim another's id."""
    return "bp-" + architecture.content_hash()[:32]


class Blueprint(Contract):
    blueprint_id: str = Field(default="", max_length=80, description="bp- + content hash of the architecture")
    name: str = Field(min_length=1, max_length=255)
    description: str = Field(min_length=1, max_length=1000)
    state: BlueprintState = BlueprintState.PROPOSED
    architecture: BlueprintArchitecture
    hyperparameters: dict[str, float] = Field(default_factory=dict)
    performance_metrics: dict[str, float] = Field(default_factory=dict)
    created_at: UtcDatetime = Field(default_factory=utc_now)
    updated_at: UtcDatetime = Field(default_factory=utc_now)
    created_by: str = Field(min_length=1, max_length=100)

    @model_validator(mode="after")
    def _derive_id(self) -> Blueprint:
        derived = blueprint_id_for(self.architecture)
        if not self.blueprint_id:
            # Bypass validate_assignment: re-entering validation here would recurse.
            object.__setattr__(self, "blueprint_id", derived)
        elif self.blueprint_id != derived:
            raise ValueError(f"blueprint_id {self.blueprint_id[:80]!r} must be the content hash of its "
                             f"architecture ({derived}) or left out")
        return self

    def is_ready_for_deployment(self) -> bool:
        return self.state == BlueprintState.CHARACTERIZED

    def get_performance_summary(self) -> str:
        if not self.performance_metrics:
            return "No metrics available"
        parts = ", ".join(f"{k}: {v:.3f}" for k, v in self.performance_metrics.items())
        return f"Performance: {parts}"


class LayerEdge(Contract):
    """Data flows from the layer at module path ``source`` to the one at ``target``."""

    source: str = Field(min_length=1, max_length=255)
    target: str = Field(min_length=1, max_length=255)


class LayerSpec(Contract):
    """One host layer that holds seed slots, as Tamiyo needs to see it."""

    name: str = Field(min_length=1, max_length=255, description="Module path")
    layer_id: int = Field(ge=0)
    kind: str = Field(min_length=1, max_length=50, description="'linear' or 'conv2d'")
    input_shape: list[int] = Field(default_factory=list, description="One sample, no batch dim")
    output_shape: list[int] = Field(default_factory=list)
    parameters: int = Field(default=0, ge=0)


class ModelSpec(Contract):
    """The host model of a session (was ``Dict[str, Any]``)."""

    architecture: str = Field(min_length=1, max_length=100, description="Host model family, e.g. 'mlp'")
    input_shape: list[int] = Field(min_length=1, description="Shape of one sample, no batch dim")
    num_classes: int = Field(ge=1)
    hidden_sizes: list[int] = Field(default_factory=list)
    target_layers: list[str] = Field(default_factory=list, description="Module paths that hold seed slots")
    seeds_per_layer: int = Field(default=1, ge=0)
    parameter_count: int = Field(default=0, ge=0)
    layers: list[LayerSpec] = Field(default_factory=list, description="Seeded layers, in data-flow order")
    topology: list[LayerEdge] = Field(default_factory=list, description="Data flow between the seeded layers")


class TrainingSpec(Contract):
    """How a session trains (was ``Dict[str, Any]``)."""

    dataset: str = Field(min_length=1, max_length=255)
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    optimizer: str = Field(default="adam", min_length=1, max_length=50)
    random_seed: int = Field(default=0, ge=0)
    device: str = Field(default="cpu", max_length=50)
    adaptation_enabled: bool = True
    adaptation_budget: int = Field(default=0, ge=0, description="Max germinations in the run")
    cooldown_epochs: int = Field(default=0, ge=0)
    auto_advance: bool = Field(default=True, description="Kasmina advances and fossilizes seeds on its own")


class TrainingSession(Contract):
    session_id: str = Field(default_factory=lambda: str(uuid.uuid4()), min_length=1, max_length=80)
    name: str = Field(min_length=1, max_length=255)
    description: str = Field(min_length=1, max_length=1000)
    training_model_config: ModelSpec
    training_config: TrainingSpec
    seeds: list[Seed] = Field(default_factory=list)
    blueprints: list[Blueprint] = Field(default_factory=list)
    status: SessionStatus = SessionStatus.INITIALIZED
    created_at: UtcDatetime = Field(default_factory=utc_now)
    updated_at: UtcDatetime = Field(default_factory=utc_now)

    def get_active_seed_count(self) -> int:
        return sum(1 for s in self.seeds if s.is_active())

    def get_session_summary(self) -> str:
        return (
            f"Session '{self.name}': {len(self.seeds)} seeds "
            f"({self.get_active_seed_count()} active), {len(self.blueprints)} blueprints, "
            f"status: {self.status.value}"
        )


