"""In-process view of the compacted ``library.kernels`` topic, with weights-only loading.

Every entry's content addresses are recomputed before it is believed (kernel id from the
checksum, checksum from the bytes, blueprint id from the architecture): an entry that
does not match is refused with the reason and never replaces the one it claims to be.
"""

from __future__ import annotations

import copy
import logging
import time
from collections import OrderedDict
from pathlib import Path

from contracts import CompiledKernel
from services.blueprints.artifacts import ArtifactError, load_artifact
from services.blueprints.content_address import BlobStore, artifact_problem, kernel_problem
from services.core.errors import EsperError
from services.oona.codec import Codec
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import TopicSpec
from services.urza.topic_view import TopicView

log = logging.getLogger(__name__)

MAX_REFUSALS_KEPT = 1024


class KernelNotFoundError(EsperError, LookupError):
    pass


class KernelLoader:
    """Library entries (verified when taken) turned into modules: artifact bytes (inline or blob), LRU of loaded
    kernels."""

    def __init__(self, blob_dir: Path | None = None, cache_size: int = 32) -> None:
        self.blobs = BlobStore(Path(blob_dir)) if blob_dir is not None else None
        self.cache_size = cache_size
        self._modules: OrderedDict[str, object] = OrderedDict()
        self.kernels: dict[str, CompiledKernel] = {}
        self.refused: dict[str, str] = {}  # kernel id -> why the last entry claiming it was refused

    def add(self, kernel: CompiledKernel) -> bool:
        """Take an entry whose content addresses hold; refuse (and remember why) one whose do not."""
        problem = kernel_problem(kernel)
        if problem is not None:
            self.refused.pop(kernel.kernel_id, None)
            self.refused[kernel.kernel_id] = problem
            if len(self.refused) > MAX_REFUSALS_KEPT:  # ids come from the bus: keep the newest few only
                self.refused.pop(next(iter(self.refused)))
            log.warning("refused library entry kernel_id=%s reason=%s", kernel.kernel_id, problem)
            return False
        self.kernels[kernel.kernel_id] = kernel
        return True

    def artifact(self, kernel: CompiledKernel) -> bytes:
        """The artifact bytes, inline or from the content-addressed blob folder, verified against the kernel."""
        problem = kernel_problem(kernel)
        if problem is not None:
            raise ArtifactError(problem)
        if kernel.binary_ref == "inline" and kernel.artifact is not None:
            data = kernel.artifact
        elif kernel.binary_ref.startswith("blob:") and self.blobs is not None:
            data = self.blobs.get(kernel.binary_ref)
        else:
            raise ArtifactError(f"kernel {kernel.kernel_id}: its artifact is not available here")
        problem = artifact_problem(kernel, data)
        if problem is not None:
            raise ArtifactError(problem)
        return data

    def load_module(self, kernel: CompiledKernel):
        """A fresh module with the kernel's weights (weights-only, content verified once, then LRU-cached)."""
        # Keyed by what the content addresses pin down: the weights (kernel id) and the architecture (blueprint id).
        key = f"{kernel.kernel_id}/{kernel.blueprint_id}"
        problem = kernel_problem(kernel)  # every time: a cached module must not vouch for other bytes
        if problem is not None:
            raise ArtifactError(problem)
        cached = self._modules.get(key)
        if cached is None:
            if kernel.architecture is None:
                raise ArtifactError(f"kernel {kernel.kernel_id} carries no blueprint architecture")
            cached = load_artifact(self.artifact(kernel), kernel.architecture, kernel.metadata.checksum)
            self._modules[key] = cached
            if len(self._modules) > self.cache_size:
                self._modules.popitem(last=False)
        else:
            self._modules.move_to_end(key)
        return copy.deepcopy(cached)  # every seed trains its own copy


class KernelLibrary(KernelLoader):
    """Reads the whole library topic from the beginning (no consumer group), then follows it."""

    def __init__(self, settings: KafkaSettings, codec: Codec, kernels: TopicSpec, blob_dir: Path | None = None) -> None:
        super().__init__(blob_dir)
        self._view = TopicView(settings, codec, kernels)

    def poll(self, timeout_s: float = 0.2) -> int:
        """Apply what arrived since the last poll; returns how many records were read."""
        new = self._view.poll(timeout_s)
        for message in new:
            self.add(message.payload)
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
                refused = f" (an entry claiming it was refused: {self.refused[kernel_id]})" \
                    if kernel_id in self.refused else ""
                raise KernelNotFoundError(
                    f"kernel {kernel_id or 'for blueprint ' + str(blueprint_id)} is not in the library{refused}")

    def close(self) -> None:
        self._view.close()
