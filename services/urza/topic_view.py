"""Follow a whole topic from its beginning without a consumer group (projections rebuilt from the log).

A view reads every record again each time it is opened, so it never dead-letters: a record it
cannot decode (whatever the decoder raised) is skipped with a log line. The services' consumer
groups dead-letter the same record once, when they consume it.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Message, TopicPartition

from contracts import OonaMessage
from services.oona import clients
from services.oona.admin import OffsetReader
from services.oona.codec import Codec
from services.oona.isolation import failure_reason, is_record_failure
from services.oona.log_reader import RANGE_READER_CONFIG, ReadToEnds, read_range
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import TopicSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ViewRecord:
    """A record read: the message as read, and its event. ``message`` is None when there is none: a tombstone
    (``failure`` None) or bytes that do not decode (``failure`` says why); it was read all the same, so it
    counts for the position."""

    raw: Message
    message: OonaMessage | None
    failure: str | None = None

    @property
    def partition(self) -> int:
        return self.raw.partition() or 0

    @property
    def offset(self) -> int:
        return self.raw.offset() or 0

    @property
    def payload(self) -> Any:
        return self.message.payload if self.message is not None else None


class TopicView:
    def __init__(self, settings: KafkaSettings, codec: Codec, spec: TopicSpec) -> None:
        self.codec = codec
        self.spec = spec
        # A range reader that does not stop at the ends: committed data, a throwaway group.
        self._consumer = clients.consumer(settings, RANGE_READER_CONFIG, {"group.id": f"view-{uuid.uuid4().hex[:8]}"})
        self.partitions: list[int] = sorted(self._consumer.list_topics(spec.name, timeout=10).topics[spec.name]
                                            .partitions)
        self._progress = ReadToEnds(OffsetReader(settings).end_offsets([(spec.name, p) for p in self.partitions]))
        self._consumer.assign([TopicPartition(spec.name, p, OFFSET_BEGINNING) for p in self.partitions])

    def poll(self, timeout_s: float = 0.2) -> list[OonaMessage]:
        """Read what arrived; returns the new messages (undecodable ones are skipped)."""
        return [r.message for r in self.read(timeout_s) if r.message is not None]

    def catch_up(self, timeout_s: float = 30.0) -> list[OonaMessage]:
        """Read at least up to the end the topic had when this view was opened."""
        return [r.message for r in self.read_to_end(timeout_s) if r.message is not None]

    def read(self, timeout_s: float = 0.2) -> list[ViewRecord]:
        """What arrived: every record, tombstones and undecodable ones included (see ``ViewRecord``)."""
        new = []
        for msg in self._consumer.consume(1000, timeout_s):
            if msg.error() is not None:
                continue
            if msg.value() is None:
                new.append(ViewRecord(msg, None))
                continue
            try:
                new.append(ViewRecord(msg, self.codec.decode(self.spec, msg.value())))
            except Exception as exc:
                if not is_record_failure(exc):
                    raise
                log.warning("skipping undecodable event topic=%s[%d] offset=%d reason=%s",
                            msg.topic(), msg.partition(), msg.offset(), failure_reason(exc))
                new.append(ViewRecord(msg, None, failure_reason(exc)))
        return new

    def read_to_end(self, timeout_s: float = 30.0) -> list[ViewRecord]:
        """``read`` at least up to the end the topic had when this view was opened."""
        deadline = time.monotonic() + timeout_s
        new = []
        while time.monotonic() < deadline:
            new += self.read(0.2)
            self._progress.advance(self._consumer)
            if self._progress.done:
                break
        return new

    def close(self) -> None:
        self._consumer.close()


def replay_until_committed(settings: KafkaSettings, codec: Codec, spec: TopicSpec, group_id: str,
                           timeout_s: float = 60.0) -> list[OonaMessage]:
    """The events a consumer group has already consumed (from the start up to its committed offsets).

    A stateless service calls this at start-up to rebuild the state it had when it last committed. The
    group's coordinator may not answer yet (on a fresh broker, or one just elected): asked again until
    ``timeout_s``.
    """
    # Joins nothing (no subscribe): the group id only names whose committed offsets to ask for.
    consumer = clients.consumer(settings, RANGE_READER_CONFIG, {"group.id": group_id})

    def committed_offsets() -> list[TopicPartition]:
        partitions = consumer.list_topics(spec.name, timeout=10).topics[spec.name].partitions
        return consumer.committed([TopicPartition(spec.name, p) for p in partitions], timeout=10)
    try:
        committed = clients.retry_transient(committed_offsets, timeout_s)
    finally:
        consumer.close()
    ranges = {(spec.name, tp.partition): (OFFSET_BEGINNING, tp.offset) for tp in committed if tp.offset > 0}
    out = []
    for msg in sorted(read_range(settings, ranges), key=lambda m: (m.partition(), m.offset())):
        if msg.value() is None:
            continue
        message = decode_or_skip(codec, spec, msg)
        if message is not None:
            out.append(message)
    return out


def decode_or_skip(codec: Codec, spec: TopicSpec, msg: Message) -> OonaMessage | None:
    """The decoded event, or None (logged) for a record that fails to decode."""
    try:
        return codec.decode(spec, msg.value())
    except Exception as exc:
        if not is_record_failure(exc):
            raise
        log.warning("skipping undecodable event topic=%s[%d] offset=%d reason=%s",
                    msg.topic(), msg.partition(), msg.offset(), failure_reason(exc))
        return None
