"""Control plane: Tamiyo's decisions, commands to Kasmina, seed transitions."""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationInfo, model_validator

from contracts._base import Contract, UtcDatetime, utc_now
from contracts.assets import LayerEdge, SeedSlotRef
from contracts.enums import AdaptationType, CommandAction, SeedState, SystemHealth
from contracts.telemetry import HealthSignal

# Until AdaptationDecision v2 the decision -> command link travelled in ``metadata`` under these keys.
LEGACY_LINK_KEYS = ("command_id", "action", "family")
_ID_MAX = 80
_FAMILY_MAX = 50
_ACTIONS = frozenset(a.value for a in CommandAction)

# The kind of change each command action is. ADVANCE and FOSSILIZE are both ``modify_architecture``
# in the original vocabulary: ``AdaptationDecision.action`` tells them apart.
ADAPTATION_OF_ACTION: dict[CommandAction, AdaptationType] = {
    CommandAction.GERMINATE: AdaptationType.ADD_SEED,
    CommandAction.ADVANCE: AdaptationType.MODIFY_ARCHITECTURE,
    CommandAction.FOSSILIZE: AdaptationType.MODIFY_ARCHITECTURE,
    CommandAction.CULL: AdaptationType.REMOVE_SEED,
}


def adaptation_type_of(action: CommandAction | None) -> AdaptationType:
    """The original design's coarse kind of a decision that issues ``action`` (``no_op`` for none)."""
    return AdaptationType.NO_OP if action is None else ADAPTATION_OF_ACTION[action]


class CatalogPosition(Contract):
    """How far one partition of a catalogue topic had been read: every record at an offset below ``offset``."""

    topic: str = Field(min_length=1, max_length=249, description="Registry topic name (no deployment prefix)")
    partition: int = Field(ge=0)
    offset: int = Field(ge=0, description="The next offset to read: records below it were folded")


class AdaptationDecision(Contract):
    """One decision of Tamiyo's at an epoch boundary (``no_op`` included, so the history is complete).

    ``action`` and ``command_id`` name the KasminaCommand the decision issued (both None when it
    issued none): ``action`` is the source of truth for what was decided; ``adaptation_type`` is
    the original design's coarse kind, derived from it (``adaptation_type_of``). ``family`` is the
    blueprint family the policy chose for a germination.

    Records written before v2 carried the three as ``metadata`` keys (``""`` for none); reading
    one moves valid values into the typed fields (``_legacy_link``), so old logs read as new.

    ``catalog_positions`` (v3) says which Urza catalogue the decision was made with: per partition of
    each catalogue topic, how far Tamiyo had folded it. Urza's catalogue as of those positions
    (``services.urza.catalog_as_of``) is what a replay decides with. Empty in records before v3.

    ``explored`` (v4): the decision's slot and family were drawn at random (the run asked for exploration),
    not the policy's argmax; ``policy_version`` is still the policy whose run it was. False before v4.
    """

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
    command_id: str | None = Field(default=None, min_length=1, max_length=_ID_MAX,
                                   description="The KasminaCommand this decision issued")
    action: CommandAction | None = Field(default=None, description="What that command asks for")
    family: str | None = Field(default=None, min_length=1, max_length=_FAMILY_MAX,
                               description="Blueprint family the policy chose (germinations)")
    catalog_positions: list[CatalogPosition] = Field(
        default_factory=list, max_length=1024, description="The catalogue read up to these positions (v3)")
    explored: bool = Field(default=False, description="Chosen at random by exploration, not by the policy (v4)")

    @model_validator(mode="before")
    @classmethod
    def _legacy_link(cls, data: Any, info: ValidationInfo) -> Any:
        """A v1 record's link in ``metadata`` -> the typed fields; never rejects a record v1 accepted.

        When a record is read (not on assignment) and sets none of the typed fields; a value the
        typed field could not hold (an unknown action, an over-long id) stays in ``metadata`` as it
        was. Empty values meant "none".
        """
        # On assignment ``field_name`` is the field assigned, one of ours (nested in an envelope, the
        # envelope's field): assigning is today's API, nothing is read out of metadata then.
        if info.field_name in cls.model_fields or not isinstance(data, dict) \
                or any(data.get(k) is not None for k in LEGACY_LINK_KEYS):
            return data
        metadata = data.get("metadata")
        if not isinstance(metadata, dict) or not any(k in metadata for k in LEGACY_LINK_KEYS):
            return data
        metadata, lifted = dict(metadata), {}
        limits = {"command_id": _ID_MAX, "family": _FAMILY_MAX}
        for key in LEGACY_LINK_KEYS:
            value = metadata.get(key)
            if value == "":
                del metadata[key]
            elif key == "action" and isinstance(value, str) and value in _ACTIONS:
                lifted[key] = metadata.pop(key)
            elif key in limits and isinstance(value, str) and len(value) <= limits[key]:
                lifted[key] = metadata.pop(key)
        return data | lifted | {"metadata": metadata}

    # The original design's helpers, kept for its API (ORIGINAL-CONTRACTS.md); no service uses them.
    def decision_priority(self) -> str:
        """'High', 'Medium' or 'Low' from the mean of confidence and urgency (original API)."""
        score = (self.confidence + self.urgency) / 2
        if score >= 0.8:
            return "High"
        if score >= 0.5:
            return "Medium"
        return "Low"

    def should_execute_immediately(self) -> bool:
        """Urgency above 0.7 and confidence above 0.6 (original API)."""
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
    """Tamiyo's analysis view of one model (not a topic record).

    Kept for the original design's API (ORIGINAL-CONTRACTS.md); Tamiyo builds its own graph
    (``services/tamiyo/features.py``) and no service uses this model.
    """

    layers: list[str] = Field(default_factory=list, description="Module paths, in data-flow order")
    topology: list[LayerEdge] = Field(default_factory=list)
    health_signals: dict[str, list[HealthSignal]] = Field(default_factory=dict)
    health_trends: dict[str, float] = Field(default_factory=dict, description="Per-layer slope of health")
    problematic_layers: list[str] = Field(default_factory=list)
    overall_health: SystemHealth = SystemHealth.HEALTHY
    analysis_time: UtcDatetime = Field(default_factory=utc_now)
