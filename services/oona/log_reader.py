"""Reading a bounded stretch of the log: given partitions from a start offset up to an end offset.

Used to rebuild state (a resumed run's events, a group's consumed history) and by tests.
No consumer group is joined and nothing is committed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

from confluent_kafka import Consumer, Message, TopicPartition

from services.core.errors import FatalError
from services.oona.settings import KafkaSettings

# (topic, partition) -> (start offset or OFFSET_BEGINNING, end offset exclusive)
Ranges = dict[tuple[str, int], tuple[int, int]]


def scan_range(settings: KafkaSettings, ranges: Ranges, *, chunk: int = 1000, timeout_s: float = 60.0,
               config: dict | None = None, on_position: Callable[[int], None] | None = None
               ) -> Iterator[list[Message]]:
    """Committed messages with ``start <= offset < end``, in chunks of at most ``chunk`` (offset order
    within each partition).

    ``config`` adds consumer settings (e.g. large fetches for bulk readers); ``on_position(n)`` is told
    how many offsets the scan moved on since the last call (messages and transaction markers), so a
    progress bar can total ``end - start``.
    """
    todo = {key: (start, end) for key, (start, end) in ranges.items() if end > max(start, 0)}
    if not todo:
        return
    consumer = Consumer(settings.client_config() | {
        "enable.auto.commit": False, "isolation.level": "read_committed",
    } | (config or {}) | {"group.id": f"range-reader-{uuid.uuid4().hex[:8]}"})
    partitions = [TopicPartition(t, p) for t, p in todo]
    done: set[tuple[str, int]] = set()
    reached = {key: max(start, 0) for key, (start, _) in todo.items()}
    deadline = time.monotonic() + timeout_s
    try:
        consumer.assign([TopicPartition(t, p, todo[(t, p)][0]) for t, p in todo])
        while len(done) < len(todo):
            if time.monotonic() > deadline:
                raise FatalError(f"could not read {len(todo) - len(done)} partition range(s) within {timeout_s:g}s")
            messages = consumer.consume(chunk, 0.5)
            good = [m for m in messages if m.error() is None and m.offset() < todo[(m.topic(), m.partition())][1]]
            if good:
                yield good
            moved = 0
            for tp in consumer.position(partitions):
                key = (tp.topic, tp.partition)
                if tp.offset < 0 or key in done:
                    continue
                position = min(tp.offset, todo[key][1])
                moved += position - reached[key]
                reached[key] = position
                # Transaction markers occupy offsets too: a partition is done once its position passed the end.
                if position >= todo[key][1]:
                    done.add(key)
            if on_position is not None and moved:
                on_position(moved)
    finally:
        consumer.close()


def read_range(settings: KafkaSettings, ranges: Ranges, timeout_s: float = 60.0) -> list[Message]:
    """Committed messages with ``start <= offset < end``, in offset order within each partition."""
    return [msg for chunk in scan_range(settings, ranges, timeout_s=timeout_s) for msg in chunk]
