"""Urabrask's bus adapter: KernelReady in, KernelCharacterized out (transactional).

What is measured is the library's entry, never the announcement: the kernel is loaded from
``library.kernels`` with its content addresses verified, and probed with the input shape of
its validated architecture (bounded by the IR limits), not the shape a message claims.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

import torch

from contracts import CompilationOutcome, KernelCharacterized, TopicName, deterministic_event_id
from services.blueprints.artifacts import ArtifactError
from services.blueprints.content_address import ready_problem
from services.oona.codec import Codec
from services.oona.consumer import Delivered
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import topic_spec
from services.oona.transactions import ExactlyOnceProcessor, nothing_to_undo
from services.urabrask.characterize import CharacterizationError, characterize
from services.urza.kernel_library import KernelLibrary, KernelNotFoundError

log = logging.getLogger(__name__)


class Urabrask:
    def __init__(self, settings: KafkaSettings, codec: Codec, blob_dir: Path, device: str = "auto",
                 worker: str | None = None) -> None:
        prefix = settings.topic_prefix
        self.ready = topic_spec(TopicName.COMPILATION_KERNEL_READY.value, prefix)
        self.out = topic_spec(TopicName.VALIDATION_KERNEL_CHARACTERIZED.value, prefix)
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   ("cpu" if device == "auto" else device))
        self.library = KernelLibrary(settings, codec, topic_spec(TopicName.LIBRARY_KERNELS.value, prefix), blob_dir)
        worker = worker or uuid.uuid4().hex[:8]
        self.processor = ExactlyOnceProcessor(
            settings, codec, group_id=f"{prefix}urabrask", transactional_id=f"{prefix}urabrask-{worker}",
            inputs=[self.ready], handler=self.handle, dlq_topic=topic_spec(TopicName.DLQ.value, prefix).name,
            on_abort=nothing_to_undo,  # each answer is a function of its record and the kernel library alone
        )

    def handle(self, delivered: Delivered):
        ready = delivered.message.payload
        if ready.outcome != CompilationOutcome.READY or ready.kernel is None:
            return
        metadata = ready.kernel
        try:
            problem = ready_problem(ready)
            if problem is not None:
                raise ArtifactError(problem)
            kernel = self.library.find(metadata.kernel_id, None, wait_s=10.0)
            if kernel.metadata.checksum != metadata.checksum or kernel.blueprint_id != metadata.blueprint_id:
                raise ArtifactError(f"kernel {metadata.kernel_id}: the announcement differs from the library entry")
            if kernel.architecture is None:
                raise ArtifactError(f"kernel {kernel.kernel_id} carries no blueprint architecture")
            result = characterize(self.library.load_module(kernel), kernel.metadata, self.device,
                                  kernel.architecture)
        except (KernelNotFoundError, ArtifactError, CharacterizationError) as exc:
            result = KernelCharacterized(kernel_id=metadata.kernel_id, blueprint_id=metadata.blueprint_id,
                                         device=str(self.device), latency_ms_p50=0, latency_ms_p95=0, peak_memory_mb=0,
                                         passed=False, failure_reason=str(exc)[:1000])
        log.info("characterized kernel_id=%s p50_ms=%.4f memory_mb=%.3f tags=%s passed=%s", result.kernel_id,
                 result.latency_ms_p50, result.peak_memory_mb, ",".join(result.tags), result.passed)
        yield self.out, self.out.message_type(
            event_id=deterministic_event_id("urabrask", metadata.kernel_id), sender_id="urabrask",
            topic=self.out.name, trace_id=delivered.message.event_id, payload=result)

    def step(self) -> int:
        return self.processor.process_batch(max_messages=20, timeout_s=0.5)

    def close(self) -> None:
        self.processor.close()
        self.library.close()
