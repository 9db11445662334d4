"""Urza's catalogue: blueprints and kernels as a projection of the compilation and validation topics.

Deleting it loses nothing: it is rebuilt by reading the four topics from the beginning.

    blueprint state:  proposed (submitted) -> validating (compiled, awaiting characterisation)
                      -> characterized (passed) | failed (compilation or characterisation failed)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from contracts import (
    Blueprint,
    BlueprintState,
    CompilationOutcome,
    CompiledKernel,
    KernelCharacterized,
    KernelMetadata,
    KernelStatus,
    TopicName,
)
from services.blueprints.content_address import kernel_problem, ready_problem
from services.oona.codec import Codec
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import topic_spec
from services.urza.topic_view import TopicView


@dataclass
class BlueprintEntry:
    blueprint: Blueprint
    state: BlueprintState = BlueprintState.PROPOSED
    failure_reason: str | None = None
    kernel_ids: list[str] = field(default_factory=list)


@dataclass
class KernelEntry:
    metadata: KernelMetadata
    status: KernelStatus = KernelStatus.TESTING
    characterization: KernelCharacterized | None = None

    @property
    def tags(self) -> list[str]:
        return self.characterization.tags if self.characterization else []


class Catalog:
    """Pure projection: feed it events in log order."""

    def __init__(self) -> None:
        self.blueprints: dict[str, BlueprintEntry] = {}
        self.kernels: dict[str, KernelEntry] = {}

    def apply(self, topic: str, payload) -> None:
        if topic == TopicName.COMPILATION_BLUEPRINT_SUBMITTED.value:
            self.blueprints.setdefault(payload.blueprint_id, BlueprintEntry(payload.blueprint))
        elif topic == TopicName.COMPILATION_KERNEL_READY.value:
            entry = self.blueprints.get(payload.blueprint_id)
            if payload.outcome == CompilationOutcome.FAILED:
                if entry:
                    entry.state, entry.failure_reason = BlueprintState.FAILED, payload.failure_reason
                return
            if ready_problem(payload) is not None:  # its ids do not agree with its checksum: not a kernel of ours
                return
            self.kernels.setdefault(payload.kernel.kernel_id, KernelEntry(payload.kernel))
            if entry:
                if entry.state == BlueprintState.PROPOSED:
                    entry.state = BlueprintState.VALIDATING
                if payload.kernel.kernel_id not in entry.kernel_ids:
                    entry.kernel_ids.append(payload.kernel.kernel_id)
        elif topic == TopicName.VALIDATION_KERNEL_CHARACTERIZED.value:
            kernel = self.kernels.get(payload.kernel_id)
            if kernel:
                kernel.characterization = payload
                kernel.status = KernelStatus.VALIDATED if payload.passed else KernelStatus.INVALID
            entry = self.blueprints.get(payload.blueprint_id)
            if entry and entry.state in (BlueprintState.PROPOSED, BlueprintState.VALIDATING):
                entry.state = BlueprintState.CHARACTERIZED if payload.passed else BlueprintState.FAILED
                entry.failure_reason = payload.failure_reason
        elif topic == TopicName.LIBRARY_KERNELS.value and isinstance(payload, CompiledKernel) \
                and kernel_problem(payload) is None:
            self.kernels.setdefault(payload.kernel_id, KernelEntry(payload.metadata))

    def query(self, *, input_shape: list[int] | None = None, output_shape: list[int] | None = None,
              tags: list[str] | None = None, max_latency_ms: float | None = None, max_memory_mb: float | None = None,
              only_validated: bool = True) -> list[KernelEntry]:
        """Kernels that fit a slot and a budget, fastest first."""
        found = []
        for entry in self.kernels.values():
            m, c = entry.metadata, entry.characterization
            if only_validated and entry.status != KernelStatus.VALIDATED:
                continue
            if input_shape is not None and m.input_shape != list(input_shape):
                continue
            if output_shape is not None and m.output_shape != list(output_shape):
                continue
            if tags and not set(tags) <= set(entry.tags):
                continue
            if max_latency_ms is not None and (c is None or c.latency_ms_p50 > max_latency_ms):
                continue
            if max_memory_mb is not None and (c is None or c.peak_memory_mb > max_memory_mb):
                continue
            found.append(entry)
        return sorted(found, key=lambda e: (e.characterization.latency_ms_p50 if e.characterization else 1e9,
                                            e.metadata.kernel_id))


CATALOG_TOPICS = (
    TopicName.COMPILATION_BLUEPRINT_SUBMITTED, TopicName.COMPILATION_KERNEL_READY,
    TopicName.VALIDATION_KERNEL_CHARACTERIZED, TopicName.LIBRARY_KERNELS,
)


def load_catalog(settings: KafkaSettings, codec: Codec) -> Catalog:
    """Rebuild the catalogue from the log (each topic in order; ready before characterised)."""
    follower = CatalogFollower(settings, codec)
    follower.close()
    return follower.catalog


class CatalogFollower:
    """A catalogue kept current in-process: rebuilt at start, then refreshed without blocking."""

    def __init__(self, settings: KafkaSettings, codec: Codec) -> None:
        self.catalog = Catalog()
        self._views = [(name.value, TopicView(settings, codec, topic_spec(name.value, settings.topic_prefix)))
                       for name in CATALOG_TOPICS]
        for name, view in self._views:
            for message in view.catch_up():
                self.catalog.apply(name, message.payload)

    def refresh(self) -> int:
        """Apply what arrived since the last call; returns how many events."""
        applied = 0
        for name, view in self._views:
            for message in view.poll(0.0):
                self.catalog.apply(name, message.payload)
                applied += 1
        return applied

    def close(self) -> None:
        for _, view in self._views:
            view.close()
