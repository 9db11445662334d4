"""In-process view of the compacted ``library.kernels`` topic, with weights-only loading."""

from __future__ import annotations

import copy
import time
from collections import OrderedDict
from pathlib import Path

from contracts import CompiledKernel
from services.blueprints.artifacts import ArtifactError, load_artifact
from services.oona.codec import Codec
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import TopicSpec
from services.urza.topic_view import TopicView


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
        self.kernels: dict[str, CompiledKernel] = {}
        self._view = TopicView(settings, codec, kernels)

    def poll(self, timeout: float = 0.2) -> int:
        """Apply what arrived since the last poll; returns how many records were read."""
        new = self._view.poll(timeout)
        for message in new:
            self.kernels[message.payload.kernel_id] = message.payload
        return len(new)

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
        self._view.close()
