"""Esper's contracts: pydantic v2 models, the single source of truth for every event.

This package imports nothing else of Esper's.
"""

from contracts.assets import (
    Blueprint,
    BlueprintArchitecture,
    LayerEdge,
    LayerSpec,
    ModelSpec,
    OpSpec,
    Seed,
    SeedSlotRef,
    TrainingSession,
    TrainingSpec,
)
from contracts.control import (
    AdaptationDecision,
    CatalogPosition,
    GateResult,
    KasminaCommand,
    ModelGraphState,
    SeedTransition,
    adaptation_type_of,
)
from contracts.dead_letter import DeadLetter
from contracts.enums import (
    AdaptationType,
    BlueprintOp,
    BlueprintState,
    BlueprintStatus,
    CommandAction,
    CompilationOutcome,
    ComponentType,
    FieldReportOutcome,
    KernelStatus,
    SeedState,
    SessionStatus,
    SystemHealth,
)
from contracts.envelope import OonaMessage, deterministic_event_id, new_event_id
from contracts.innovation import BlueprintSubmitted, FieldReport
from contracts.kernels import CompiledKernel, KernelCharacterized, KernelMetadata, KernelReady
from contracts.lifecycle import TrainingSessionEvent
from contracts.policies import PolicyPromoted, PolicyPublished
from contracts.seed_identity import SeedId, layer_id_for_path, validate_seed_id
from contracts.telemetry import EpochCompleted, HealthSignal, SystemStatePacket
from contracts.topics import TopicName

__all__ = [
    "AdaptationDecision",
    "AdaptationType",
    "Blueprint",
    "BlueprintArchitecture",
    "BlueprintOp",
    "BlueprintState",
    "BlueprintStatus",
    "BlueprintSubmitted",
    "CatalogPosition",
    "CommandAction",
    "CompilationOutcome",
    "CompiledKernel",
    "ComponentType",
    "DeadLetter",
    "EpochCompleted",
    "FieldReport",
    "FieldReportOutcome",
    "GateResult",
    "HealthSignal",
    "KasminaCommand",
    "KernelCharacterized",
    "KernelMetadata",
    "KernelReady",
    "KernelStatus",
    "LayerEdge",
    "LayerSpec",
    "ModelGraphState",
    "ModelSpec",
    "OonaMessage",
    "OpSpec",
    "PolicyPromoted",
    "PolicyPublished",
    "Seed",
    "SeedId",
    "SeedSlotRef",
    "SeedState",
    "SeedTransition",
    "SessionStatus",
    "SystemHealth",
    "SystemStatePacket",
    "TopicName",
    "TrainingSession",
    "TrainingSessionEvent",
    "TrainingSpec",
    "adaptation_type_of",
    "deterministic_event_id",
    "layer_id_for_path",
    "new_event_id",
    "validate_seed_id",
]
