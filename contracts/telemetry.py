"""Operational telemetry: per-seed health signals and per-epoch system state."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from contracts._base import Contract, UtcDatetime, utc_now
from contracts.assets import SeedSlotRef
from contracts.enums import SystemHealth


class HealthSignal(SeedSlotRef):
    """Health of one seed slot, measured from real activations and gradients.

    The original carried ``seed_id`` as a bare int (the index in the layer); that
    form is still accepted and becomes ``seed_idx``.
    """

    layer_name: str = Field(default="", max_length=255, description="Module path of the host layer")
    chunk_id: int = Field(default=0, ge=0, description="Slice of the layer's features this seed watches")
    epoch: int = Field(ge=0)
    activation_variance: float = Field(ge=0, description="Variance of the layer's activations")
    dead_neuron_ratio: float = Field(ge=0, le=1, description="Fraction (0..1) of units never active")
    avg_correlation: float = Field(ge=-1, le=1, description="Mean pairwise correlation of units")
    gradient_norm: float = Field(default=0.0, ge=0, description="L2 norm of the layer's weight gradient")
    capacity_gain: float = Field(
        default=0.0, ge=0,
        description="Largest loss-gradient norm of one new unit's fan-out in this layer (GradMax; 0: no signal)")
    is_ready_for_transition: bool = False
    health_score: float = Field(default=1.0, ge=0, le=1, description="0 (dead) .. 1 (healthy)")
    execution_latency: float = Field(default=0.0, ge=0, description="Forward time of the slot, milliseconds")
    error_count: int = Field(default=0, ge=0)
    active_seeds: int = Field(default=0, ge=0)
    total_seeds: int = Field(default=1, ge=1)
    timestamp: UtcDatetime = Field(default_factory=utc_now)

    @model_validator(mode="before")
    @classmethod
    def _legacy_seed_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and "seed_id" in data and "seed_idx" not in data:
            data = dict(data)
            data["seed_idx"] = data.pop("seed_id")
        return data

    def health_status(self) -> str:
        """'Healthy', 'Warning' or 'Critical' (original API, kept; services read ``health_score``)."""
        if self.health_score >= 0.8:
            return "Healthy"
        if self.health_score >= 0.6:
            return "Warning"
        return "Critical"

    def is_healthy(self) -> bool:
        return self.health_score >= 0.7 and self.error_count < 5


class SystemStatePacket(Contract):
    """Whole-system state at an epoch boundary. Loads are fractions in [0, 1]."""

    epoch: int = Field(ge=0)
    total_seeds: int = Field(ge=0)
    active_seeds: int = Field(ge=0)
    training_loss: float = Field(ge=0)
    validation_loss: float = Field(ge=0)
    system_load: float = Field(ge=0, le=1, description="CPU/GPU utilisation as a fraction 0..1")
    memory_usage: float = Field(ge=0, le=1, description="Memory in use as a fraction 0..1")
    timestamp: UtcDatetime = Field(default_factory=utc_now)

    def system_health(self) -> str:
        """'Critical', 'Warning' or 'Normal' (original API, kept; ``health_level`` gives a SystemHealth)."""
        if self.system_load > 0.9 or self.memory_usage > 0.9:
            return "Critical"
        if self.system_load > 0.7 or self.memory_usage > 0.7:
            return "Warning"
        return "Normal"

    def health_level(self) -> SystemHealth:
        return {
            "Critical": SystemHealth.CRITICAL,
            "Warning": SystemHealth.DEGRADED,
            "Normal": SystemHealth.HEALTHY,
        }[self.system_health()]

    def is_overloaded(self) -> bool:
        return self.system_load > 0.8 or self.memory_usage > 0.8


class EpochCompleted(Contract):
    """Emitted by Tolaria at the end of every epoch."""

    state: SystemStatePacket
    train_accuracy: float = Field(ge=0, le=1)
    validation_accuracy: float = Field(ge=0, le=1)
    epoch_seconds: float = Field(ge=0)
    samples_per_second: float = Field(default=0.0, ge=0)
    parameter_count: int = Field(ge=0)
    seed_parameter_count: int = Field(default=0, ge=0)
    learning_rate: float = Field(default=0.0, ge=0)
    # What Tolaria published for this epoch before this event: a consumer that has seen this
    # many of each knows the epoch is complete (Tamiyo decides only on complete epochs).
    health_signals: int = Field(default=0, ge=0)
    seed_transitions: int = Field(default=0, ge=0)
    field_reports: int = Field(default=0, ge=0)
