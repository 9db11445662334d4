"""Dead letters as records of ``esper.dlq``: reading their headers, selecting, summing up, re-drive plans.

Pure (no Kafka): a record is anything with ``partition() offset() key() value() headers() timestamp()``,
as confluent-kafka's ``Message``. The header conventions are in ``contracts.dead_letter``:

- a dead letter carries the original record's headers (Kafka Connect's convention) and the
  ``esper.dlq.*`` headers beside them (``dead_letter_headers``);
- a re-drive is recorded on the DLQ itself by a marker record naming the dead letter's offset, so
  that ``plan_redrive`` re-drives each dead letter at most once, whoever re-drove it before.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from contracts.dead_letter import (
    DLQ_HEADER_ERROR_TYPE,
    DLQ_HEADER_FAILED_AT,
    DLQ_HEADER_GROUP,
    DLQ_HEADER_OFFSET,
    DLQ_HEADER_PARTITION,
    DLQ_HEADER_REASON,
    DLQ_HEADER_REDRIVE_OF,
    DLQ_HEADER_REDRIVEN_AT,
    DLQ_HEADER_REDRIVEN_FROM,
    DLQ_HEADER_REDRIVEN_TO,
    DLQ_HEADER_TOPIC,
    DLQ_HEADERS,
)

Header = tuple[str, bytes | None]


def dead_letter_headers(original: Iterable[Header] | None, own: Sequence[Header]) -> list[Header]:
    """The headers of a dead letter: the original record's, then the DLQ's own (``esper.dlq.*``).

    An original header that has one of the DLQ's own names is left out, so that reading a dead
    letter's source and reason is never ambiguous.
    """
    return [(k, v) for k, v in (original or ()) if k not in DLQ_HEADERS] + list(own)


def _text(value: bytes | None) -> str:
    return value.decode("utf-8", "replace") if value is not None else ""


@dataclass(frozen=True)
class DlqRecord:
    """One record of the DLQ: a dead letter, or a marker recording that one was re-driven."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...]
    timestamp_ms: int | None = None

    @classmethod
    def from_message(cls, msg: Any) -> DlqRecord:
        kind, ts = msg.timestamp() if hasattr(msg, "timestamp") else (0, None)
        return cls(msg.partition(), msg.offset(), msg.key(), msg.value(), tuple(msg.headers() or ()),
                   ts if kind else None)

    def header(self, name: str) -> str | None:
        found = None
        for key, value in self.headers:  # the last one wins, as in a dict of the headers
            if key == name:
                found = _text(value)
        return found

    # -- markers -------------------------------------------------------------------------------
    @property
    def redrive_of(self) -> int | None:
        """For a re-drive marker: the offset of the dead letter it re-drove (same partition); else None."""
        text = self.header(DLQ_HEADER_REDRIVE_OF)
        return int(text) if text is not None and text.isdigit() else None

    @property
    def is_marker(self) -> bool:
        return self.header(DLQ_HEADER_REDRIVE_OF) is not None

    # -- dead letters --------------------------------------------------------------------------
    @property
    def source_topic(self) -> str:
        return self.header(DLQ_HEADER_TOPIC) or "unknown"

    @property
    def source_partition(self) -> int | None:
        text = self.header(DLQ_HEADER_PARTITION)
        return int(text) if text is not None and text.isdigit() else None

    @property
    def source_offset(self) -> int | None:
        text = self.header(DLQ_HEADER_OFFSET)
        return int(text) if text is not None and text.isdigit() else None

    @property
    def source(self) -> str:
        return f"{self.source_topic}:{_or_dash(self.source_partition)}:{_or_dash(self.source_offset)}"

    @property
    def reason(self) -> str:
        return self.header(DLQ_HEADER_REASON) or "no reason recorded"

    @property
    def error_type(self) -> str:
        return self.header(DLQ_HEADER_ERROR_TYPE) or "unknown"

    @property
    def group(self) -> str:
        return self.header(DLQ_HEADER_GROUP) or ""

    @property
    def failed_at(self) -> datetime | None:
        """When it was dead-lettered: its header, else the broker's timestamp."""
        text = self.header(DLQ_HEADER_FAILED_AT)
        if text:
            try:
                return datetime.fromisoformat(text)
            except ValueError:
                pass
        if self.timestamp_ms is not None:
            return datetime.fromtimestamp(self.timestamp_ms / 1000, UTC)
        return None

    @property
    def dlq_headers(self) -> list[Header]:
        return [(k, v) for k, v in self.headers if k in DLQ_HEADERS]

    @property
    def original_headers(self) -> list[Header]:
        """The headers the original record had (everything but the DLQ's own)."""
        return [(k, v) for k, v in self.headers if k not in DLQ_HEADERS]


def _or_dash(value: int | None) -> str:
    return "-" if value is None else str(value)


@dataclass(frozen=True)
class Selection:
    """Which dead letters: by source topic (with or without the topic prefix), consumer group,
    a substring of the reason (case-insensitive) and a range of DLQ offsets (both ends included)."""

    topic: str | None = None
    group: str | None = None
    reason: str | None = None
    from_offset: int | None = None
    to_offset: int | None = None
    prefix: str = ""

    def matches(self, record: DlqRecord) -> bool:
        if record.is_marker:
            return False
        if self.topic is not None and record.source_topic not in (self.topic, self.prefix + self.topic):
            return False
        if self.group is not None and record.group != self.group:
            return False
        if self.reason is not None and self.reason.lower() not in record.reason.lower():
            return False
        if self.from_offset is not None and record.offset < self.from_offset:
            return False
        return self.to_offset is None or record.offset <= self.to_offset


def select(records: Iterable[DlqRecord], selection: Selection) -> list[DlqRecord]:
    return [r for r in records if selection.matches(r)]


def redriven(records: Iterable[DlqRecord]) -> set[tuple[int, int]]:
    """(partition, offset) of every dead letter a marker says was re-driven."""
    return {(r.partition, r.redrive_of) for r in records if r.redrive_of is not None}


@dataclass(frozen=True)
class Summary:
    """Dead letters of one source topic, group and reason."""

    topic: str
    group: str
    reason: str
    count: int
    redriven: int
    first_seen: datetime | None
    last_seen: datetime | None
    first_offset: int
    last_offset: int


def summarize(records: Sequence[DlqRecord], selection: Selection = Selection()) -> list[Summary]:
    """Counts of the selected dead letters by (source topic, group, reason), with first/last seen;
    largest count first."""
    done = redriven(records)
    groups: dict[tuple[str, str, str], list[DlqRecord]] = {}
    for record in select(records, selection):
        groups.setdefault((record.source_topic, record.group, record.reason), []).append(record)
    out = []
    for (topic, group, reason), letters in groups.items():
        seen = [t for t in (r.failed_at for r in letters) if t is not None]
        out.append(Summary(topic, group, reason, len(letters),
                           sum((r.partition, r.offset) in done for r in letters),
                           min(seen) if seen else None, max(seen) if seen else None,
                           min(r.offset for r in letters), max(r.offset for r in letters)))
    return sorted(out, key=lambda s: (-s.count, s.topic, s.group, s.reason))


@dataclass(frozen=True)
class RedrivePlan:
    todo: list[DlqRecord]  # selected, never re-driven: re-drive these
    already: list[DlqRecord]  # selected, re-driven before: left alone


def plan_redrive(records: Sequence[DlqRecord], selection: Selection) -> RedrivePlan:
    """The selected dead letters, split into those to re-drive and those a marker says were re-driven."""
    done = redriven(records)
    todo: list[DlqRecord] = []
    already: list[DlqRecord] = []
    for record in select(records, selection):
        (already if (record.partition, record.offset) in done else todo).append(record)
    return RedrivePlan(todo, already)


def redrive_headers(letter: DlqRecord, dlq_topic: str) -> list[Header]:
    """The re-driven record's headers: the original ones, and where it comes from (replacing an older one)."""
    kept = [(k, v) for k, v in letter.original_headers if k != DLQ_HEADER_REDRIVEN_FROM]
    return kept + [(DLQ_HEADER_REDRIVEN_FROM, f"{dlq_topic}:{letter.partition}:{letter.offset}".encode())]


def marker_headers(letter: DlqRecord, redriven_to: str, at: datetime) -> list[Header]:
    return [(DLQ_HEADER_REDRIVE_OF, str(letter.offset).encode()), (DLQ_HEADER_REDRIVEN_TO, redriven_to.encode()),
            (DLQ_HEADER_REDRIVEN_AT, at.isoformat().encode())]


def marker_key(letter: DlqRecord) -> bytes:
    return f"redrive:{letter.offset}".encode()


def is_redrive_marker(msg: Any) -> bool:
    """True for a message of the DLQ that records a re-drive rather than a dead letter."""
    return any(k == DLQ_HEADER_REDRIVE_OF for k, _ in (msg.headers() or ()))


def parse_source(text: str) -> tuple[str, int, int]:
    """``TOPIC:PARTITION:OFFSET`` (the topic may hold dots, not colons); ValueError when malformed."""
    topic, sep, rest = text.rpartition(":")
    topic, sep2, partition = topic.rpartition(":")
    if not (sep and sep2 and topic and partition.isdigit() and rest.isdigit()):
        raise ValueError(f"--source {text!r} must look like TOPIC:PARTITION:OFFSET (e.g. telemetry.seed.health:0:17)")
    return topic, int(partition), int(rest)
