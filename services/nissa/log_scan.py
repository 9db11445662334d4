"""Bounded stretches of the log, read in chunks: what replay and the archive read from Kafka.

``log_ranges`` says where to start and stop in every partition of some topics:
``{(topic, partition): (start, end)}`` with ``end`` the last stable offset now (committed
data only) and ``start`` the first offset still on the broker, or the first offset at or
after ``from_offset`` / ``from_time`` (Kafka's ListOffsets by timestamp, i.e. offsets_for_times).
``scan`` yields the committed messages of those ranges in chunks (offset order within a
partition). No consumer group is joined and nothing is committed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime

from confluent_kafka import IsolationLevel, Message, TopicPartition
from confluent_kafka.admin import OffsetSpec

from services.core.errors import FatalError
from services.oona import clients
from services.oona.admin import end_offsets, partitions_of
from services.oona.log_reader import Ranges, scan_range
from services.oona.settings import KafkaSettings

SCAN_CONFIG: dict[str, str | int | bool] = {
    "enable.auto.commit": False,
    "isolation.level": "read_committed",
    "enable.partition.eof": False,
    "fetch.max.bytes": 64 * 1024 * 1024,
    "max.partition.fetch.bytes": 16 * 1024 * 1024,
    "queued.max.messages.kbytes": 256 * 1024,
    "fetch.wait.max.ms": 100,
}


def _list_offsets(settings: KafkaSettings, partitions: list[tuple[str, int]], spec: OffsetSpec) -> dict:
    client = clients.admin(settings)
    futures = client.list_offsets({TopicPartition(t, p): spec for t, p in partitions},
                                  isolation_level=IsolationLevel.READ_COMMITTED,
                                  request_timeout=settings.connect_timeout_s)
    with clients.map_exceptions(lambda reason: FatalError(f"could not list offsets: {reason}")):
        offsets = {(tp.topic, tp.partition): f.result(timeout=settings.connect_timeout_s).offset
                   for tp, f in futures.items()}
    return offsets


def log_ranges(settings: KafkaSettings, topics: list[str], *, from_offset: int | None = None,
               from_time: datetime | None = None) -> Ranges:
    """``(start, end)`` per partition of ``topics`` (those that exist); empty ranges are kept."""
    partitions = partitions_of(clients.admin(settings), topics, timeout_s=settings.connect_timeout_s)
    if not partitions:
        return {}
    ends = end_offsets(clients.admin(settings), partitions, timeout_s=settings.connect_timeout_s)
    earliest = _list_offsets(settings, partitions, OffsetSpec.earliest())
    starts = {key: max(earliest[key], from_offset or 0) for key in partitions}
    if from_time is not None:
        at = _list_offsets(settings, partitions, OffsetSpec.for_timestamp(int(from_time.timestamp() * 1000)))
        # -1: no message at or after that time in this partition.
        starts = {key: max(starts[key], ends[key] if at[key] < 0 else at[key]) for key in partitions}
    return {key: (min(starts[key], ends[key]), ends[key]) for key in partitions}


def scan(settings: KafkaSettings, ranges: Ranges, chunk: int = 20_000, timeout_s: float = 600.0,
         on_position: Callable[[int], None] | None = None) -> Iterator[list[Message]]:
    """Committed messages of ``ranges`` in chunks of at most ``chunk``, read with bulk fetches."""
    return scan_range(settings, ranges, chunk=chunk, timeout_s=timeout_s, config=SCAN_CONFIG, on_position=on_position)
