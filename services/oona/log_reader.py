"""Reading a bounded stretch of the log: given partitions from a start offset up to an end offset.

``ReadToEnds`` is the one answer to "has this consumer read up to those end offsets yet?", for
every reader that stops (or reports being caught up) at the ends a partition had when it looked:
``scan_range`` here, the group consumer's ``catch_up``, Urza's topic views, Nissa's sink, Tamiyo's
decision log and the schema log. ``scan_range`` is used to rebuild state (a resumed run's events,
a group's consumed history) and by tests; it joins no consumer group and commits nothing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from confluent_kafka import Consumer, Message, TopicPartition

from services.core.errors import FatalError
from services.oona import clients
from services.oona.messages import position_of
from services.oona.settings import KafkaSettings

Partition = tuple[str, int]
# (topic, partition) -> (start offset or OFFSET_BEGINNING, end offset exclusive)
Ranges = dict[Partition, tuple[int, int]]

# A range reader's own settings: read committed data only, keep no offsets in Kafka.
RANGE_READER_CONFIG: dict[str, str | int | bool] = {"enable.auto.commit": False, "isolation.level": "read_committed"}


class ReadToEnds:
    """How far a consumer has read its partitions towards fixed end offsets (exclusive).

    ``reached`` starts at each partition's start (where its consumer begins: an assigned offset,
    a committed one; 0 when unknown) and moves with the consumer's position, never past the end.
    The position, not the last message seen, is what counts: transaction markers occupy offsets
    too, so a partition is read once its position passed the end.
    """

    def __init__(self, ends: Mapping[Partition, int], starts: Mapping[Partition, int] | None = None) -> None:
        self.ends = dict(ends)
        starts = starts or {}
        self.reached = {key: min(max(starts.get(key, 0), 0), end) for key, end in self.ends.items()}

    @property
    def done(self) -> bool:
        return all(self.reached[key] >= end for key, end in self.ends.items())

    def advance(self, consumer: Consumer) -> int:
        """Take the consumer's positions; returns how many offsets its partitions moved on towards their ends
        (messages and transaction markers). A partition with no position yet stays where it started."""
        pending = [TopicPartition(t, p) for (t, p), end in self.ends.items() if self.reached[(t, p)] < end]
        if not pending:
            return 0
        moved = 0
        for tp in consumer.position(pending):
            key = (tp.topic, tp.partition)
            if tp.offset < 0:
                continue
            position = min(tp.offset, self.ends[key])
            moved += max(0, position - self.reached[key])
            self.reached[key] = max(self.reached[key], position)
        return moved


def in_range(messages: list[Message], todo: Ranges, lowest_end: int) -> list[Message]:
    """The ``messages`` without an error and before their partition's end in ``todo``.

    A chunk of a long scan has no error and no offset as high as the lowest end: that is checked in
    one pass in C (``map`` of the messages' own methods), then the chunk is taken whole; only a chunk
    near an end, or with an error, is filtered message by message (a replay's profile spent a fifth of
    its Python time in the per-message check).
    """
    # Typed ``int | None``: only a message with an error has no offset, and those were ruled out first.
    if messages and not any(map(Message.error, messages)) and (
            max(map(Message.offset, messages)) < lowest_end):  # type: ignore[type-var,operator]
        return messages
    return [m for m in messages if m.error() is None and _before_end(m, todo)]


def _before_end(msg: Message, todo: Ranges) -> bool:
    topic, partition, offset = position_of(msg)
    return offset < todo[(topic, partition)][1]


def scan_range(settings: KafkaSettings, ranges: Ranges, *, chunk: int = 1000, timeout_s: float = 60.0,
               config: dict[str, Any] | None = None, on_position: Callable[[int], None] | None = None
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
    # Bulk readers override fetch sizes through ``config``; the group is a throwaway (nothing committed).
    consumer = clients.consumer(settings, RANGE_READER_CONFIG, config or {},
                                {"group.id": f"range-reader-{uuid.uuid4().hex[:8]}"})
    progress = ReadToEnds({key: end for key, (_, end) in todo.items()},
                          {key: start for key, (start, _) in todo.items()})
    lowest_end = min(end for _, end in todo.values())
    deadline = time.monotonic() + timeout_s
    try:
        consumer.assign([TopicPartition(t, p, todo[(t, p)][0]) for t, p in todo])
        while not progress.done:
            if time.monotonic() > deadline:
                left = sum(1 for key, end in progress.ends.items() if progress.reached[key] < end)
                raise FatalError(f"could not read {left} partition range(s) within {timeout_s:g}s")
            messages = consumer.consume(chunk, 0.5)
            good = in_range(messages, todo, lowest_end)
            if good:
                yield good
            moved = progress.advance(consumer)
            if on_position is not None and moved:
                on_position(moved)
    finally:
        consumer.close()


def read_range(settings: KafkaSettings, ranges: Ranges, timeout_s: float = 60.0) -> list[Message]:
    """Committed messages with ``start <= offset < end``, in offset order within each partition."""
    return [msg for chunk in scan_range(settings, ranges, timeout_s=timeout_s) for msg in chunk]
