"""Reading a bounded stretch of the log: given partitions from a start offset up to an end offset.

Used to rebuild state (a resumed run's events, a group's consumed history) and by tests.
No consumer group is joined and nothing is committed.
"""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, Message, TopicPartition

from services.oona.errors import FatalError
from services.oona.settings import KafkaSettings

# (topic, partition) -> (start offset or OFFSET_BEGINNING, end offset exclusive)
Ranges = dict[tuple[str, int], tuple[int, int]]


def read_range(settings: KafkaSettings, ranges: Ranges, timeout_s: float = 60.0) -> list[Message]:
    """Committed messages with ``start <= offset < end``, in offset order within each partition."""
    ranges = {key: (start, end) for key, (start, end) in ranges.items() if end > max(start, 0)}
    if not ranges:
        return []
    consumer = Consumer(settings.client_config() | {
        "group.id": f"range-reader-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
        "isolation.level": "read_committed",
    })
    partitions = [TopicPartition(topic, partition) for topic, partition in ranges]
    out: list[Message] = []
    done: set[tuple[str, int]] = set()
    deadline = time.monotonic() + timeout_s
    try:
        consumer.assign([TopicPartition(t, p, ranges[(t, p)][0]) for t, p in ranges])
        while len(done) < len(ranges):
            if time.monotonic() > deadline:
                raise FatalError(f"could not read {len(ranges) - len(done)} partition range(s) within {timeout_s:g}s")
            for msg in consumer.consume(1000, 0.5):
                if msg.error() is None and msg.offset() < ranges[(msg.topic(), msg.partition())][1]:
                    out.append(msg)
            # Transaction markers occupy offsets too: a partition is done once its position passed the end.
            for tp in consumer.position(partitions):
                if tp.offset >= ranges[(tp.topic, tp.partition)][1]:
                    done.add((tp.topic, tp.partition))
    finally:
        consumer.close()
    return out
