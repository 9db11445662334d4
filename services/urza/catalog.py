"""Urza's catalogue: blueprints and kernels as a projection of the compilation and validation topics.

Deleting it loses nothing: it is rebuilt by reading the four topics from the beginning.

What a decision reads of it (the characterised kernels for a slot, their blueprints) does not depend on the
order in which the four topics' records were interleaved, only on which records of each partition were
folded, in their own order: a characterisation read before its kernel waits for it. So the catalogue is
named by its ``positions`` (per catalogue topic partition, the next offset to read), and the catalogue as
of those positions (``catalog_as_of``) is the one a live follower had when it reached them.

    blueprint state:  proposed (submitted) -> validating (compiled, awaiting characterisation)
                      -> characterized (passed) | failed (compilation or characterisation failed)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from contracts import (
    Blueprint,
    BlueprintState,
    CatalogPosition,
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
    """Pure projection: feed it each partition's events in log order (the partitions in any interleaving)."""

    def __init__(self) -> None:
        self.blueprints: dict[str, BlueprintEntry] = {}
        self.kernels: dict[str, KernelEntry] = {}
        # (registry topic, partition) -> the next offset to read: every record below it is folded in.
        self.positions: dict[tuple[str, int], int] = {}
        self._early: dict[str, KernelCharacterized] = {}  # characterised before its kernel was read
        self._position_list: list[CatalogPosition] | None = None

    def follow(self, topic: str, partition: int) -> None:
        """Name a partition as followed (position 0 until a record of it is folded)."""
        if self.positions.setdefault((topic, partition), 0) == 0:
            self._position_list = None

    def apply_at(self, topic: str, partition: int, offset: int, payload) -> None:
        """Fold the record at ``offset`` of ``topic[partition]`` (``payload`` None: not an event, e.g. one
        that does not decode; its position still counts) and move the position past it."""
        if payload is not None:
            self.apply(topic, payload)
        if offset >= self.positions.get((topic, partition), 0):
            self.positions[(topic, partition)] = offset + 1
            self._position_list = None

    def name_positions(self, positions: dict[tuple[str, int], int]) -> None:
        """Say the catalogue is the one as of ``positions`` (a fold as of them: some records below them may be
        gone, compacted away, and the catalogue is still the one of those positions)."""
        self.positions = dict(positions)
        self._position_list = None

    def position_list(self) -> list[CatalogPosition]:
        """The positions as the contract records them (sorted by topic and partition)."""
        if self._position_list is None:
            self._position_list = [CatalogPosition(topic=t, partition=p, offset=o)
                                   for (t, p), o in sorted(self.positions.items())]
        return self._position_list

    def _kernel(self, metadata: KernelMetadata) -> None:
        if metadata.kernel_id not in self.kernels:
            self.kernels[metadata.kernel_id] = entry = KernelEntry(metadata)
            early = self._early.pop(metadata.kernel_id, None)
            if early is not None:
                entry.characterization = early
                entry.status = KernelStatus.VALIDATED if early.passed else KernelStatus.INVALID

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
            self._kernel(payload.kernel)
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
            else:  # its kernel's records are on other topics, maybe not read yet
                self._early[payload.kernel_id] = payload
            entry = self.blueprints.get(payload.blueprint_id)
            if entry and entry.state in (BlueprintState.PROPOSED, BlueprintState.VALIDATING):
                entry.state = BlueprintState.CHARACTERIZED if payload.passed else BlueprintState.FAILED
                entry.failure_reason = payload.failure_reason
        elif topic == TopicName.LIBRARY_KERNELS.value and isinstance(payload, CompiledKernel) \
                and kernel_problem(payload) is None:
            self._kernel(payload.metadata)

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
            for partition in view.partitions:
                self.catalog.follow(name, partition)
            for record in view.read_to_end():
                self.catalog.apply_at(name, record.partition, record.offset, record.payload)

    def refresh(self, timeout_s: float = 0.0) -> int:
        """Apply what arrived since the last call; returns how many records. Called between decisions (the
        service's one thread), so a decision reads the catalogue as of the positions it records."""
        applied = 0
        for name, view in self._views:
            for record in view.read(timeout_s):
                self.catalog.apply_at(name, record.partition, record.offset, record.payload)
                applied += 1
        return applied

    def reach(self, positions: dict[tuple[str, int], int], timeout_s: float = 30.0) -> bool:
        """Refresh until the catalogue is at least at ``positions`` (of the partitions it follows), e.g. those
        of decisions made before a restart, so no later decision sees less than an earlier one; False when
        ``timeout_s`` passed first."""
        deadline = time.monotonic() + timeout_s
        followed = self.catalog.positions
        while True:
            if all(followed.get(k, 0) >= o for k, o in positions.items() if k in followed):
                return True
            if time.monotonic() >= deadline:
                return False
            self.refresh(0.1)

    def close(self) -> None:
        for _, view in self._views:
            view.close()
