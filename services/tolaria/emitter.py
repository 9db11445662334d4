"""Publishes a run's facts with deterministic event ids, never twice.

Every event id is derived from (run, topic, what it is about), so a resumed run
produces the same ids for the same facts. On resume the events already on the log
after the checkpoint's log position are read back and skipped.
"""

from __future__ import annotations

import logging
import uuid

from confluent_kafka import Consumer, TopicPartition
from pydantic import BaseModel

from contracts import OonaMessage, deterministic_event_id
from services.oona.admin import admin_client, end_offsets, partitions_of
from services.oona.codec import Codec
from services.oona.errors import DecodeError
from services.oona.producer import OonaProducer
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import TopicSpec

log = logging.getLogger(__name__)

LogPositions = dict[str, dict[int, int]]  # topic -> partition -> offset


class RunEmitter:
    def __init__(self, settings: KafkaSettings, producer: OonaProducer, codec: Codec, topics: dict[str, TopicSpec],
                 run_id: str, sender: str = "tolaria") -> None:
        self.settings = settings
        self.producer = producer
        self.codec = codec
        self.topics = topics
        self.run_id = run_id
        self.sender = sender
        self.already_on_log: set[str] = set()
        self.emitted = 0
        self.skipped = 0
        self._admin = admin_client(settings)
        self._partitions: list[tuple[str, int]] | None = None

    def emit(self, topic: str, payload: BaseModel, *about: object, trace_id: str | None = None) -> OonaMessage | None:
        spec = self.topics[topic]
        event_id = deterministic_event_id(self.run_id, topic, *about)
        if event_id in self.already_on_log:
            self.skipped += 1
            return None
        message = spec.message_type(event_id=event_id, sender_id=self.sender, topic=spec.name, run_id=self.run_id,
                                    trace_id=trace_id, payload=payload)
        self.producer.publish(spec, message)
        self.emitted += 1
        return message

    def flush(self) -> None:
        self.producer.flush()

    def _consumer(self) -> Consumer:
        return Consumer(self.settings.client_config() | {
            "group.id": f"tolaria-readback-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
            "isolation.level": "read_committed",
        })

    def log_positions(self) -> LogPositions:
        """End offsets of every partition of the run's topics (call after ``flush``)."""
        if self._partitions is None:
            self._partitions = partitions_of(self._admin, [spec.name for spec in self.topics.values()])
        positions: LogPositions = {}
        for (topic, partition), offset in end_offsets(self._admin, self._partitions, committed_only=False).items():
            positions.setdefault(topic, {})[partition] = offset
        return positions

    def read_back(self, since: LogPositions) -> int:
        """Collect the ids of this run's events written after ``since``; returns how many were found."""
        consumer = self._consumer()
        try:
            targets: dict[tuple[str, int], int] = {}
            assignment = []
            starts = {(t, int(p)): o for t, parts in since.items() for p, o in parts.items()}
            for key, end in end_offsets(self._admin, list(starts), committed_only=False).items():
                if end > starts[key]:
                    targets[key] = end
                    assignment.append(TopicPartition(key[0], key[1], starts[key]))
            if not assignment:
                return 0
            consumer.assign(assignment)
            specs = {spec.name: spec for spec in self.topics.values()}
            done: set[tuple[str, int]] = set()
            while len(done) < len(targets):
                for msg in consumer.consume(500, 1.0):
                    if msg.error() is not None:
                        continue
                    where = (msg.topic(), msg.partition())
                    if msg.offset() + 1 >= targets[where]:
                        done.add(where)
                    if msg.key() != self.run_id.encode():
                        continue
                    try:
                        self.already_on_log.add(self.codec.decode(specs[msg.topic()], msg.value()).event_id)
                    except DecodeError:
                        continue
                # Transaction markers occupy offsets too: stop once the position passed the target.
                for tp in consumer.position([TopicPartition(t, p) for t, p in targets]):
                    if tp.offset >= targets[(tp.topic, tp.partition)]:
                        done.add((tp.topic, tp.partition))
            log.info("read back run_id=%s events_on_log=%d", self.run_id, len(self.already_on_log))
            return len(self.already_on_log)
        finally:
            consumer.close()
