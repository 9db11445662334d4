"""Topic names (the operational registry with keys and partitions lives in Oona)."""

from __future__ import annotations

from enum import Enum


class TopicName(str, Enum):
    TRAINING_SESSIONS = "training.sessions"
    TELEMETRY_SEED_HEALTH = "telemetry.seed.health"
    SYSTEM_EVENTS_EPOCH = "system.events.epoch"
    CONTROL_TAMIYO_DECISIONS = "control.tamiyo.decisions"
    CONTROL_KASMINA_COMMANDS = "control.kasmina.commands"
    LIFECYCLE_SEED_TRANSITIONS = "lifecycle.seed.transitions"
    COMPILATION_BLUEPRINT_SUBMITTED = "compilation.blueprint.submitted"
    COMPILATION_KERNEL_READY = "compilation.kernel.ready"
    VALIDATION_KERNEL_CHARACTERIZED = "validation.kernel.characterized"
    INNOVATION_FIELD_REPORTS = "innovation.field_reports"
    LIBRARY_KERNELS = "library.kernels"
    LIBRARY_POLICIES = "library.policies"
    LIBRARY_POLICY_PROMOTIONS = "library.policy.promotions"
    DLQ = "esper.dlq"
    # The schema log: every writer schema, published before its first use (internal, not an event topic).
    SCHEMAS = "_esper_schemas"
