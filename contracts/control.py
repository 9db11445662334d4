"""Control plane: Tamiyo's decisions, commands to Kasmina, seed transitions."""

from __future__ import annotations

from pydantic import Field

from contracts._base import Contract, UtcDatetime, utc_now
from contracts.assets import LayerEdge, SeedSlotRef
from contracts.enums import AdaptationType, CommandAction, SeedState, SystemHealth
from contracts.telemetry import HealthSignal


class AdaptationDecision(Contract):
    decision_id: str = Field(default="", max_length=80)
    layer_name: str = Field(min_length=1, max_length=255)
    adaptation_type: AdaptationType
    confidence: float = Field(ge=0, le=1)
    urgency: float = Field(ge=0, le=1)
    epoch: int = Field(default=0, ge=0)
    layer_id: int | None = Field(default=None, ge=0)
    seed_idx: int | None = Field(default=None, ge=0)
    blueprint_id: str | None = Field(default=None, max_length=80)
    kernel_id: str | None = Field(default=None, max_length=80)
    policy_version: str = Field(default="", max_length=100)
    reason: str = Field(default="", max_length=1000)
    features: dict[str, float] = Field(default_factory=dict, description="Inputs that drove the decision")
    metadata: dict[str, str] = Field(default_factory=dict)
    timestamp: UtcDatetime = Field(default_factory=utc_now)

    def decision_priority(self) -> str:
        score = (self.confidence + self.urgency) / 2
        if score >= 0.8:
            return "High"
        if score >= 0.5:
            return "Medium"
        return "Low"

    def should_execute_immediately(self) -> bool:
        return self.urgency > 0.7 and self.confidence > 0.6


class KasminaCommand(SeedSlotRef):
    """Ask Tolaria to change one seed slot; applied at the next epoch boundary."""

    command_id: str = Field(min_length=1, max_length=80)
    action: CommandAction
    layer_name: str = Field(default="", max_length=255)
    blueprint_id: str | None = Field(default=None, max_length=80)
    kernel_id: str | None = Field(default=None, max_length=80)
    decision_id: str | None = Field(default=None, max_length=80)
    issued_at_epoch: int = Field(default=0, ge=0)


class GateResult(Contract):
    """One measured gate on a lifecycle transition."""

    name: str = Field(min_length=1, max_length=100)
    passed: bool
    value: float
    threshold: float


class SeedTransition(SeedSlotRef):
    layer_name: str = Field(default="", max_length=255)
    from_state: SeedState
    to_state: SeedState
    epoch: int = Field(ge=0)
    reason: str = Field(default="", max_length=1000)
    command_id: str | None = Field(default=None, max_length=80)
    kernel_id: str | None = Field(default=None, max_length=80)
    gates: list[GateResult] = Field(default_factory=list)


class ModelGraphState(Contract):
    """Tamiyo's analysis view of one model (not a topic record)."""

    layers: list[str] = Field(default_factory=list, description="Module paths, in data-flow order")
    topology: list[LayerEdge] = Field(default_factory=list)
    health_signals: dict[str, list[HealthSignal]] = Field(default_factory=dict)
    health_trends: dict[str, float] = Field(default_factory=dict, description="Per-layer slope of health")
    problematic_layers: list[str] = Field(default_factory=list)
    overall_health: SystemHealth = SystemHealth.HEALTHY
    analysis_time: UtcDatetime = Field(default_factory=utc_now)
