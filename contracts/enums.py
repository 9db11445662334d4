"""String-valued enums of the contracts: one vocabulary per entity."""

from __future__ import annotations

from enum import Enum


class SeedState(str, Enum):
    """Lifecycle stage of a seed slot (Kasmina)."""

    DORMANT = "dormant"
    GERMINATED = "germinated"
    TRAINING = "training"
    GRAFTING = "grafting"
    FOSSILIZED = "fossilized"
    CULLED = "culled"


class BlueprintState(str, Enum):
    """The one lifecycle vocabulary of a blueprint."""

    PROPOSED = "proposed"
    COMPILING = "compiling"
    VALIDATING = "validating"
    CHARACTERIZED = "characterized"
    DEPLOYED = "deployed"
    FAILED = "failed"
    ARCHIVED = "archived"


class BlueprintStatus(str, Enum):
    """Legacy blueprint vocabulary of the original design, kept readable.

    New code uses :class:`BlueprintState`; :meth:`to_state` maps old values.
    """

    UNVALIDATED = "unvalidated"
    COMPILING = "compiling"
    VALIDATED = "validated"
    INVALID = "invalid"

    def to_state(self) -> BlueprintState:
        return _BLUEPRINT_STATUS_TO_STATE[self]


_BLUEPRINT_STATUS_TO_STATE = {
    BlueprintStatus.UNVALIDATED: BlueprintState.PROPOSED,
    BlueprintStatus.COMPILING: BlueprintState.COMPILING,
    # "validated" meant: compiled and checked, awaiting characterisation.
    BlueprintStatus.VALIDATED: BlueprintState.VALIDATING,
    BlueprintStatus.INVALID: BlueprintState.FAILED,
}


class KernelStatus(str, Enum):
    """The one lifecycle vocabulary of a compiled kernel."""

    VALIDATED = "validated"
    INVALID = "invalid"
    TESTING = "testing"
    DEPLOYED = "deployed"


class SystemHealth(str, Enum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    CRITICAL = "critical"
    OFFLINE = "offline"


class ComponentType(str, Enum):
    """The subsystems of the original design, kept for its API (ORIGINAL-CONTRACTS.md).

    No record carries it: services name themselves in ``OonaMessage.sender_id``.
    """

    TAMIYO = "tamiyo"  # strategic controller
    KARN = "karn"  # generative architect
    KASMINA = "kasmina"  # execution layer
    TEZZERET = "tezzeret"  # compilation forge
    URABRASK = "urabrask"  # evaluation engine
    TOLARIA = "tolaria"  # training orchestrator
    URZA = "urza"  # central library
    OONA = "oona"  # message bus
    NISSA = "nissa"  # observability
    SIMIC = "simic"  # policy training environment
    EMRAKUL = "emrakul"  # architectural sculptor


class SessionStatus(str, Enum):
    INITIALIZED = "initialized"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"


class AdaptationType(str, Enum):
    ADD_SEED = "add_seed"
    REMOVE_SEED = "remove_seed"
    MODIFY_ARCHITECTURE = "modify_architecture"
    OPTIMIZE_PARAMETERS = "optimize_parameters"
    # Tamiyo looked and chose to do nothing: recorded so replays can compare.
    NO_OP = "no_op"


class CommandAction(str, Enum):
    """What a KasminaCommand asks Tolaria to do to one seed slot."""

    GERMINATE = "germinate"
    ADVANCE = "advance"
    CULL = "cull"
    FOSSILIZE = "fossilize"


class FieldReportOutcome(str, Enum):
    FOSSILIZED = "fossilized"
    CULLED = "culled"
    ROLLED_BACK = "rolled_back"


class CompilationOutcome(str, Enum):
    READY = "ready"
    FAILED = "failed"


class BlueprintOp(str, Enum):
    """The whitelist of operations a blueprint may use; nothing else compiles."""

    LINEAR = "linear"
    CONV2D = "conv2d"
    LAYER_NORM = "layer_norm"
    BATCH_NORM = "batch_norm"
    RELU = "relu"
    GELU = "gelu"
    TANH = "tanh"
    RESIDUAL = "residual"
    BOTTLENECK = "bottleneck"
    ATTENTION_LITE = "attention_lite"
