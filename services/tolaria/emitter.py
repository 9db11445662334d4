"""Publishes a run's facts with deterministic event ids, never twice.

Every event id is derived from (run, topic, what it is about), so a resumed run
produces the same ids for the same facts. On resume the events already on the log
after the checkpoint's log position are read back and skipped.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel

from contracts import OonaMessage, deterministic_event_id
from services.core.errors import DecodeError
from services.oona.admin import OffsetReader
from services.oona.codec import Codec
from services.oona.log_reader import read_range
from services.oona.producer import OonaProducer
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import TopicSpec

log = logging.getLogger(__name__)

LogPositions = dict[str, dict[int, int]]  # topic -> partition -> offset
# How long a run rides out an unreachable broker before failing (it can then be resumed).
BROKER_OUTAGE_S = 180.0


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
        self._offsets = OffsetReader(settings)
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
        self.producer.flush(timeout_s=BROKER_OUTAGE_S)

    def log_positions(self) -> LogPositions:
        """End offsets of every partition of the run's topics (call after ``flush``)."""
        if self._partitions is None:
            self._partitions = self._offsets.partitions_of([spec.name for spec in self.topics.values()])
        positions: LogPositions = {}
        ends = self._offsets.end_offsets(self._partitions, committed_only=False, timeout_s=BROKER_OUTAGE_S)
        for (topic, partition), offset in ends.items():
            positions.setdefault(topic, {})[partition] = offset
        return positions

    def read_back(self, since: LogPositions) -> int:
        """Collect the ids of this run's events written after ``since``; returns how many were found."""
        starts = {(t, int(p)): o for t, parts in since.items() for p, o in parts.items()}
        ends = self._offsets.end_offsets(list(starts), committed_only=False)
        specs = {spec.name: spec for spec in self.topics.values()}
        key = self.run_id.encode()
        for msg in read_range(self.settings, {k: (starts[k], ends[k]) for k in starts}):
            topic = msg.topic()
            if msg.key() != key or topic is None:  # (every record read has its topic)
                continue
            try:
                self.already_on_log.add(self.codec.decode(specs[topic], msg.value()).event_id)
            except DecodeError:
                continue
        log.info("read back run_id=%s events_on_log=%d", self.run_id, len(self.already_on_log))
        return len(self.already_on_log)
