"""Tezzeret's bus adapter: submissions in, KernelReady + library entry out, in one transaction.

Submissions are keyed by blueprint id, so one worker of the group owns a blueprint at a
time; compilation is deterministic (the init seed comes from the blueprint id, the kernel
id is the artifact's sha256), so even a recompilation yields the same kernel. Blueprints
already answered on ``compilation.kernel.ready`` are skipped.

A submission never stops the worker: an out-of-bounds IR or a blueprint id that is not its
content hash is a contract violation dead-lettered at decode, and every blueprint that decodes
gets an answer (a kernel or a FAILED KernelReady with the reason): ``compile_blueprint`` raises
nothing but BlueprintError for a bad blueprint and checks its bounds before allocating.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from pathlib import Path

from contracts import BlueprintSubmitted, CompilationOutcome, KernelReady, TopicName, deterministic_event_id
from services.blueprints.compiler import compile_blueprint
from services.blueprints.content_address import BlobStore
from services.blueprints.modules import BlueprintError
from services.oona.codec import Codec
from services.oona.consumer import Delivered
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import topic_spec
from services.oona.transactions import ExactlyOnceProcessor
from services.tezzeret.answers import AnsweredBlueprints
from services.urza.topic_view import TopicView

log = logging.getLogger(__name__)

INLINE_ARTIFACT_LIMIT = 1024 * 1024  # bigger artifacts go to the content-addressed blob folder


def init_seed_for(blueprint_id: str) -> int:
    return int.from_bytes(hashlib.sha256(blueprint_id.encode()).digest()[:4], "big")


class Tezzeret:
    def __init__(self, settings: KafkaSettings, codec: Codec, blob_dir: Path, worker: str | None = None,
                 max_parameters: int = 2_000_000) -> None:
        prefix = settings.topic_prefix
        self.submitted = topic_spec(TopicName.COMPILATION_BLUEPRINT_SUBMITTED.value, prefix)
        self.ready = topic_spec(TopicName.COMPILATION_KERNEL_READY.value, prefix)
        self.library = topic_spec(TopicName.LIBRARY_KERNELS.value, prefix)
        self.blobs = BlobStore(Path(blob_dir))
        self.max_parameters = max_parameters
        self.answered = TopicView(settings, codec, self.ready)  # blueprint ids already compiled or failed
        self._answers = AnsweredBlueprints(m.payload.blueprint_id for m in self.answered.catch_up())
        worker = worker or uuid.uuid4().hex[:8]
        self.processor = ExactlyOnceProcessor(
            settings, codec, group_id=f"{prefix}tezzeret", transactional_id=f"{prefix}tezzeret-{worker}",
            inputs=[self.submitted], handler=self.handle, dlq_topic=topic_spec(TopicName.DLQ.value, prefix).name,
            on_abort=self._answers.aborted,  # nothing in an aborted transaction was answered
        )
        self.compiled = 0

    def handle(self, delivered: Delivered):
        submission: BlueprintSubmitted = delivered.message.payload
        self._answers.note_committed(m.payload.blueprint_id for m in self.answered.poll(0.0))
        if not self._answers.claim(submission.blueprint_id, delivered.offset):
            log.info("already compiled blueprint_id=%s", submission.blueprint_id)
            return
        bp = submission.blueprint
        trace = delivered.message.event_id
        event_id = deterministic_event_id("tezzeret", submission.blueprint_id)
        try:
            kernel, seconds = compile_blueprint(bp, init_seed=init_seed_for(bp.blueprint_id),
                                                max_parameters=self.max_parameters)
        except BlueprintError as exc:
            log.info("compilation failed blueprint_id=%s reason=%s", bp.blueprint_id, exc)
            yield self.ready, self.ready.message_type(
                event_id=event_id, sender_id="tezzeret", topic=self.ready.name, trace_id=trace,
                payload=KernelReady(blueprint_id=bp.blueprint_id, outcome=CompilationOutcome.FAILED,
                                    failure_reason=str(exc)[:2000]))
            return
        if kernel.artifact is not None and len(kernel.artifact) > INLINE_ARTIFACT_LIMIT:
            ref = self.blobs.put(kernel.artifact)
            kernel = kernel.model_copy(update={"artifact": None, "binary_ref": ref})
        self.compiled += 1
        log.info("compiled blueprint_id=%s kernel_id=%s params=%d", bp.blueprint_id, kernel.kernel_id,
                 kernel.metadata.parameter_count)
        yield self.library, self.library.message_type(
            event_id=deterministic_event_id("tezzeret-library", kernel.kernel_id), sender_id="tezzeret",
            topic=self.library.name, trace_id=trace, payload=kernel)
        yield self.ready, self.ready.message_type(
            event_id=event_id, sender_id="tezzeret", topic=self.ready.name, trace_id=trace,
            payload=KernelReady(blueprint_id=bp.blueprint_id, outcome=CompilationOutcome.READY, kernel=kernel.metadata,
                                compile_seconds=seconds))

    def step(self) -> int:
        handled = self.processor.process_batch(max_messages=50, timeout_s=0.5)
        self._answers.committed_now()
        return handled

    def close(self) -> None:
        self.processor.close()
        self.answered.close()
