"""In-process view of the compacted ``library.kernels`` topic, with weights-only loading."""

from __future__ import annotations

import copy
import logging
import time
import uuid
from collections import OrderedDict
from pathlib import Path

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from contracts import CompiledKernel
from services.blueprints.artifacts import ArtifactError, load_artifact
from services.oona.codec import Codec
from services.oona.errors import DecodeError
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import TopicSpec

log = logging.getLogger(__name__)


class KernelNotFoundError(LookupError):
    pass


class KernelLoader:
    """Turns library entries into modules: artifact bytes (inline or blob), checksum, LRU of loaded kernels."""

    def __init__(self, blob_dir: Path | None = None, cache_size: int = 32) -> None:
        self.blob_dir = Path(blob_dir) if blob_dir is not None else None
        self.cache_size = cache_size
        self._modules: OrderedDict[str, object] = OrderedDict()

    def artifact(self, kernel: CompiledKernel) -> bytes:
        """The artifact bytes, inline or from the content-addressed blob folder."""
        if kernel.artifact is not None:
            return kernel.artifact
        if kernel.binary_ref.startswith("blob:") and self.blob_dir is not None:
            path = self.blob_dir / kernel.binary_ref[len("blob:"):]
            if path.exists():
                return path.read_bytes()
        raise ArtifactError(f"kernel {kernel.kernel_id}: artifact {kernel.binary_ref} is not available here")

    def load_module(self, kernel: CompiledKernel):
        """A fresh module with the kernel's weights (weights-only, checksum verified once, then LRU-cached)."""
        cached = self._modules.get(kernel.kernel_id)
        if cached is None:
            if kernel.architecture is None:
                raise ArtifactError(f"kernel {kernel.kernel_id} carries no blueprint architecture")
            cached = load_artifact(self.artifact(kernel), kernel.architecture, kernel.metadata.checksum)
            self._modules[kernel.kernel_id] = cached
            if len(self._modules) > self.cache_size:
                self._modules.popitem(last=False)
        else:
            self._modules.move_to_end(kernel.kernel_id)
        return copy.deepcopy(cached)  # every seed trains its own copy



class KernelLibrary(KernelLoader):
    """Reads the whole library topic from the beginning (no consumer group), then follows it."""

    def __init__(self, settings: KafkaSettings, codec: Codec, kernels: TopicSpec, blob_dir: Path | None = None) -> None:
        super().__init__(blob_dir)
        self.codec = codec
        self.spec = kernels
        self.kernels: dict[str, CompiledKernel] = {}
        self._consumer = Consumer(settings.client_config() | {
            "group.id": f"urza-view-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
            "auto.offset.reset": "earliest", "isolation.level": "read_committed",
        })
        metadata = self._consumer.list_topics(kernels.name, timeout=10).topics[kernels.name]
        self._consumer.assign([TopicPartition(kernels.name, p, OFFSET_BEGINNING) for p in metadata.partitions])

    def poll(self, timeout: float = 0.2) -> int:
        """Apply what arrived since the last poll; returns how many records were read."""
        n = 0
        for msg in self._consumer.consume(500, timeout):
            if msg.error() is not None:
                continue
            n += 1
            if msg.value() is None:  # tombstone: the kernel was removed
                self.kernels.pop((msg.key() or b"").decode(), None)
                continue
            try:
                kernel = self.codec.decode(self.spec, msg.value()).payload
            except DecodeError as exc:
                log.warning("skipping undecodable library record offset=%d reason=%s", msg.offset(), exc.reason)
                continue
            self.kernels[kernel.kernel_id] = kernel
        return n

    def find(self, kernel_id: str | None, blueprint_id: str | None, wait_s: float = 0.0) -> CompiledKernel:
        deadline = time.monotonic() + wait_s
        while True:
            self.poll(0.1)
            if kernel_id and kernel_id in self.kernels:
                return self.kernels[kernel_id]
            if not kernel_id and blueprint_id:
                matches = [k for k in self.kernels.values() if k.blueprint_id == blueprint_id]
                if matches:
                    return matches[-1]
            if time.monotonic() >= deadline:
                raise KernelNotFoundError(f"kernel {kernel_id or 'for blueprint ' + str(blueprint_id)} is not in the library")

    def close(self) -> None:
        self._consumer.close()
