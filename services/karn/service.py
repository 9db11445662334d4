"""Karn's bus adapter: publishes the starter library, then answers field reports with new candidates.

State (which blueprints exist, how they fared) is rebuilt at start from
``compilation.blueprint.submitted`` and ``innovation.field_reports``; new candidates
and the consumed report offsets are committed in one transaction. A report whose
handling raises is dead-lettered by the processor (and skipped when replayed).

A batch aborted on a passing broker error (a coordinator moving after a broker died) is
read again, so the generator goes back to the copy taken at the last commit: the reports of
the aborted batch are not counted twice, and its candidates, unpublished, are proposed again.
"""

from __future__ import annotations

import logging
import uuid

from contracts import Blueprint, BlueprintSubmitted, TopicName, deterministic_event_id
from services.karn.generator import Generator
from services.oona.codec import Codec
from services.oona.consumer import Delivered
from services.oona.isolation import replay_skipping_failures
from services.oona.producer import OonaProducer
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import TopicSpec, topic_spec
from services.oona.transactions import ExactlyOnceProcessor
from services.urza.topic_view import TopicView, replay_until_committed

log = logging.getLogger(__name__)


def submission(spec: TopicSpec, blueprint: Blueprint, submitted_by: str, trace_id: str | None = None):
    return spec.message_type(
        event_id=deterministic_event_id("submitted", blueprint.blueprint_id, submitted_by), sender_id=submitted_by,
        topic=spec.name, trace_id=trace_id,
        payload=BlueprintSubmitted(blueprint_id=blueprint.blueprint_id, submitted_by=submitted_by, blueprint=blueprint),
    )


def submit(settings: KafkaSettings, codec: Codec, blueprints: list[Blueprint], submitted_by: str = "user") -> int:
    """Publish blueprints (``esper blueprint submit``); returns how many were sent."""
    spec = topic_spec(TopicName.COMPILATION_BLUEPRINT_SUBMITTED.value, settings.topic_prefix)
    producer = OonaProducer(settings, codec)
    for bp in blueprints:
        producer.publish(spec, submission(spec, bp, submitted_by))
    producer.flush()
    return len(blueprints)


class Karn:
    def __init__(
        self, settings: KafkaSettings, codec: Codec, starter: list[Blueprint], worker: str | None = None
    ) -> None:
        prefix = settings.topic_prefix
        self.submitted = topic_spec(TopicName.COMPILATION_BLUEPRINT_SUBMITTED.value, prefix)
        reports = topic_spec(TopicName.INNOVATION_FIELD_REPORTS.value, prefix)
        self.generator = Generator()
        view = TopicView(settings, codec, self.submitted)
        replay_skipping_failures(view.catch_up(), lambda m: self.generator.know(m.payload.blueprint), "submitted")
        view.close()
        new = [bp for bp in starter if bp.blueprint_id not in self.generator.blueprints]
        if new:
            submit(settings, codec, new, submitted_by="karn")
            log.info("starter library published blueprints=%d", len(new))
        for bp in starter:
            self.generator.know(bp)
        self.proposed = 0
        # How blueprints fared so far: the reports this group already consumed (no outputs for them).
        group = f"{prefix}karn"
        # A report that failed when consumed was dead-lettered then; replaying it must not stop the start.
        replay_skipping_failures(replay_until_committed(settings, codec, reports, group),
                                 lambda m: self.generator.record(m.payload), "field reports")
        worker = worker or uuid.uuid4().hex[:8]
        self.processor = ExactlyOnceProcessor(
            settings, codec, group_id=group, transactional_id=f"{prefix}karn-{worker}", inputs=[reports],
            handler=self.handle, dlq_topic=topic_spec(TopicName.DLQ.value, prefix).name,
            on_abort=self._back_to_last_commit,
        )
        self._committed = self.generator.copy()  # the state the committed offsets stand for

    def handle(self, delivered: Delivered):
        report = delivered.message.payload
        self.generator.record(report)
        for bp in self.generator.propose(report, rng_seed=delivered.message.event_id):
            self.proposed += 1
            log.info("proposed blueprint_id=%s name=%s parent=%s", bp.blueprint_id, bp.name, report.blueprint_id)
            yield self.submitted, submission(self.submitted, bp, "karn", trace_id=delivered.message.event_id)

    def step(self) -> int:
        handled = self.processor.process_batch(max_messages=100, timeout_s=0.5)
        if self.processor.times.committed:
            self._committed = self.generator.copy()
        return handled

    def _back_to_last_commit(self) -> None:
        self.generator = self._committed.copy()

    def close(self) -> None:
        self.processor.close()
