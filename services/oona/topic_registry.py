"""The topic registry: topic <-> record type <-> key <-> partitions <-> cleanup policy."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel

from contracts import (
    AdaptationDecision,
    BlueprintSubmitted,
    CompiledKernel,
    DeadLetter,
    EpochCompleted,
    FieldReport,
    HealthSignal,
    KasminaCommand,
    KernelCharacterized,
    KernelReady,
    OonaMessage,
    PolicyPromoted,
    PolicyPublished,
    SeedTransition,
    TopicName,
    TrainingSessionEvent,
)
from contracts.published_schema import PublishedSchema
from services.core.errors import UnknownTopicError

KeyKind = Literal["run_id", "blueprint_id", "kernel_id", "version", "source", "fingerprint"]
# What sets a topic's partition count per deployment (KafkaSettings.run_partitions / work_partitions): the
# run-scoped topics, and the work queues of the innovation plane (one per blueprint or kernel); None: fixed,
# a topic every reader reads whole.
Scaling = Literal["run", "work"]

# Run-scoped topics are co-partitioned (same partition count, keyed by run_id with the same
# partitioner), so a run's events land on the same partition number of every topic and a
# consumer group using the range assignor gives all of one run to one member (Tamiyo relies on it).
# The partitions are the unit of scale-out: at most this many instances of a service share the work.
RUN_PARTITIONS = 3
WORK_PARTITIONS = 3


@dataclass(frozen=True)
class TopicSpec:
    name: str
    payload: type[BaseModel]
    key: KeyKind
    partitions: int = RUN_PARTITIONS
    compacted: bool = False
    # The DLQ carries original bytes + headers, not an Avro record.
    raw: bool = False
    # Bus-internal (the schema log): created with the others, but no event topic (Nissa does not sink it).
    internal: bool = False
    configs: dict[str, str] = field(default_factory=dict)
    scaling: Scaling | None = None

    def sized(self, run_partitions: int, work_partitions: int) -> TopicSpec:
        """This topic with the partition count a deployment sets for its kind (fixed topics unchanged)."""
        count = {"run": run_partitions, "work": work_partitions}.get(self.scaling or "", self.partitions)
        return self if count == self.partitions else dataclasses.replace(self, partitions=count)

    @property
    def record_name(self) -> str:
        return f"{self.payload.__name__}Message"

    @property
    def message_type(self) -> type[OonaMessage[Any]]:
        return OonaMessage[self.payload]  # type: ignore[name-defined]

    @property
    def run_scoped(self) -> bool:
        return self.key == "run_id"

    def topic_configs(self) -> dict[str, str]:
        configs = {"cleanup.policy": "compact" if self.compacted else "delete"}
        configs.update(self.configs)
        return configs


# Data topics accept up to 2 MiB; the DLQ up to 8 MiB so that an oversized
# message (rejected by consumers above max_event_bytes) still fits there whole.
_DATA = {"max.message.bytes": str(2 * 1024 * 1024)}

TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(TopicName.TRAINING_SESSIONS.value, TrainingSessionEvent, "run_id", configs=_DATA, scaling="run"),
    TopicSpec(TopicName.TELEMETRY_SEED_HEALTH.value, HealthSignal, "run_id", configs=_DATA, scaling="run"),
    TopicSpec(TopicName.SYSTEM_EVENTS_EPOCH.value, EpochCompleted, "run_id", configs=_DATA, scaling="run"),
    TopicSpec(TopicName.CONTROL_TAMIYO_DECISIONS.value, AdaptationDecision, "run_id", configs=_DATA, scaling="run"),
    TopicSpec(TopicName.CONTROL_KASMINA_COMMANDS.value, KasminaCommand, "run_id", configs=_DATA, scaling="run"),
    TopicSpec(TopicName.LIFECYCLE_SEED_TRANSITIONS.value, SeedTransition, "run_id", configs=_DATA, scaling="run"),
    TopicSpec(TopicName.COMPILATION_BLUEPRINT_SUBMITTED.value, BlueprintSubmitted, "blueprint_id", configs=_DATA,
              scaling="work"),
    TopicSpec(TopicName.COMPILATION_KERNEL_READY.value, KernelReady, "blueprint_id", configs=_DATA, scaling="work"),
    TopicSpec(TopicName.VALIDATION_KERNEL_CHARACTERIZED.value, KernelCharacterized, "kernel_id", configs=_DATA,
              scaling="work"),
    TopicSpec(TopicName.INNOVATION_FIELD_REPORTS.value, FieldReport, "run_id", configs=_DATA, scaling="run"),
    TopicSpec(TopicName.LIBRARY_KERNELS.value, CompiledKernel, "kernel_id", partitions=1, compacted=True,
              configs=_DATA),
    # Tamiyo's policy versions and their promotions (services/tamiyo/policy_registry.py): every instance reads
    # both whole, so each knows every version and which one is promoted.
    TopicSpec(TopicName.LIBRARY_POLICIES.value, PolicyPublished, "version", partitions=1, compacted=True,
              configs=_DATA),
    TopicSpec(TopicName.LIBRARY_POLICY_PROMOTIONS.value, PolicyPromoted, "version", partitions=1, compacted=True,
              configs=_DATA),
    TopicSpec(
        TopicName.DLQ.value,
        DeadLetter,
        "source",
        partitions=1,
        raw=True,
        configs={"max.message.bytes": str(8 * 1024 * 1024)},
    ),
    # Writer schemas by fingerprint, kept forever: compaction keeps the one record per key.
    TopicSpec(
        TopicName.SCHEMAS.value,
        PublishedSchema,
        "fingerprint",
        partitions=1,
        compacted=True,
        raw=True,
        internal=True,
        configs={"max.message.bytes": str(1024 * 1024), "min.compaction.lag.ms": "0"},
    ),
)

_BY_NAME = {spec.name: spec for spec in TOPICS}


def topic_spec(name: str, prefix: str = "") -> TopicSpec:
    """The registered topic ``name``; with a prefix, the same topic under ``prefix + name``."""
    try:
        spec = _BY_NAME[name]
    except KeyError:
        raise UnknownTopicError(name) from None
    return dataclasses.replace(spec, name=prefix + spec.name) if prefix else spec


def all_topics(prefix: str = "") -> tuple[TopicSpec, ...]:
    return tuple(topic_spec(spec.name, prefix) for spec in TOPICS)


def data_topics(prefix: str = "") -> tuple[TopicSpec, ...]:
    """The event topics and the DLQ: every registered topic but the bus-internal ones (the schema log)."""
    return tuple(spec for spec in all_topics(prefix) if not spec.internal)


def avro_topics() -> tuple[TopicSpec, ...]:
    """Every topic whose values are Avro records (all but the DLQ)."""
    return tuple(spec for spec in TOPICS if not spec.raw)
