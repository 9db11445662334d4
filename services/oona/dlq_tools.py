"""The DLQ on the bus: read all of it, and re-drive dead letters to their source topics at most once.

A re-drive runs in one Kafka transaction per chunk: the re-produced originals (value, key,
original headers plus ``esper.dlq.redriven_from``) and, on the DLQ, one marker per dead letter
(``esper.dlq.redrive_of``; see ``dlq_records``) commit together or not at all. Every re-drive
uses the same transactional id, so ``init_transactions`` fences (aborts) any other re-drive still
in flight; only then is the DLQ read, up to its last stable offset. So the markers read are every
re-drive that ever committed, and no dead letter is re-driven twice, whoever runs ``redrive``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import OFFSET_BEGINNING, KafkaError, Message, Producer

from contracts import TopicName
from services.core.errors import DeliveryError, EsperError
from services.oona import clients
from services.oona.admin import end_offsets, partitions_of
from services.oona.dlq_records import (
    DlqRecord,
    RedrivePlan,
    Selection,
    marker_headers,
    marker_key,
    plan_redrive,
    redrive_headers,
)
from services.oona.log_reader import scan_range
from services.oona.producer import PRODUCER_DEFAULTS
from services.oona.settings import KafkaSettings
from services.oona.topic_registry import topic_spec

log = logging.getLogger(__name__)

REDRIVE_CHUNK = 500  # dead letters per transaction


class DeadLetterError(EsperError):
    """A DLQ command that cannot do what was asked (an unknown offset, a missing source topic)."""


def dlq_topic(settings: KafkaSettings) -> str:
    return topic_spec(TopicName.DLQ.value, settings.topic_prefix).name


def read_dlq(settings: KafkaSettings, timeout_s: float = 120.0) -> list[DlqRecord]:
    """Every committed record of the DLQ (dead letters and re-drive markers), in offset order."""
    name = dlq_topic(settings)
    admin = clients.admin(settings)
    partitions = partitions_of(admin, [name])
    if not partitions:
        raise DeadLetterError(f"topic {name} does not exist (run `esper topics create`)")
    ends = end_offsets(admin, partitions)
    ranges = {key: (OFFSET_BEGINNING, end) for key, end in ends.items()}
    return [DlqRecord.from_message(m) for chunk in scan_range(settings, ranges, timeout_s=timeout_s) for m in chunk]


@dataclass(frozen=True)
class RedriveResult:
    plan: RedrivePlan
    redriven: list[tuple[DlqRecord, str]]  # each dead letter and where it went (TOPIC:PARTITION:OFFSET)


class _Deliveries:
    def __init__(self) -> None:
        self.done: dict[int, str] = {}
        self.failed: list[str] = []

    def callback(self, index: int) -> Callable[[KafkaError | None, Message], None]:
        def report(error: KafkaError | None, msg: Message) -> None:
            if error is not None:
                self.failed.append(f"{msg.topic()}: {error.str()}")
            else:
                self.done[index] = f"{msg.topic()}:{msg.partition()}:{msg.offset()}"
        return report


def redrive(settings: KafkaSettings, selection: Selection, *, dry_run: bool = False,
            transactional_id: str | None = None, timeout_s: float = 60.0) -> RedriveResult:
    """Re-produce the selected dead letters never re-driven before to their source topics (see above)."""
    name = dlq_topic(settings)
    producer = None
    if not dry_run:
        producer = clients.producer(settings, PRODUCER_DEFAULTS, {
            "transactional.id": transactional_id or f"{settings.topic_prefix}esper-dlq-redrive",
            "delivery.report.only.error": False,  # the offsets each record got go into its marker
        })
        producer.init_transactions(timeout_s)  # fences any re-drive still in flight: its markers are final now
    try:
        records = read_dlq(settings, timeout_s=max(timeout_s, 120.0))
        plan = plan_redrive(records, selection)
        if producer is None or not plan.todo:
            return RedriveResult(plan, [])
        _check_sources(settings, plan.todo)
        redriven = []
        for start in range(0, len(plan.todo), REDRIVE_CHUNK):
            redriven += _redrive_chunk(producer, name, plan.todo[start:start + REDRIVE_CHUNK], timeout_s)
        return RedriveResult(plan, redriven)
    finally:
        if producer is not None:
            producer.flush(10)


def _check_sources(settings: KafkaSettings, letters: Sequence[DlqRecord]) -> None:
    """Every source topic and partition exists: otherwise say which, before producing anything."""
    wanted = {(r.source_topic, r.source_partition) for r in letters}
    existing = set(partitions_of(clients.admin(settings), sorted({t for t, _ in wanted})))
    missing = sorted(f"{t}:{'-' if p is None else p}" for t, p in wanted if (t, p) not in existing)
    if missing:
        raise DeadLetterError(f"cannot re-drive to {', '.join(missing[:5])}: no such topic partition "
                              "(narrow the selection with --topic/--reason/--from-offset)")


def _redrive_chunk(producer: Producer, dlq: str, letters: Sequence[DlqRecord], timeout_s: float
                   ) -> list[tuple[DlqRecord, str]]:
    deliveries = _Deliveries()
    producer.begin_transaction()
    try:
        for i, letter in enumerate(letters):
            partition = letter.source_partition
            if partition is None:  # never: _check_sources refused the selection before anything was produced
                raise DeadLetterError(f"dead letter {letter.partition}:{letter.offset} names no source partition")
            producer.produce(letter.source_topic, value=letter.value, key=letter.key, partition=partition,
                             # list[Header]: the stub's invariant list of str | bytes | None refuses it.
                             headers=redrive_headers(letter, dlq),  # type: ignore[arg-type]
                             on_delivery=deliveries.callback(i))
        producer.flush(timeout_s)  # the offsets they got, for the markers
        if deliveries.failed or len(deliveries.done) != len(letters):
            raise DeliveryError(letters[0].source_topic, deliveries.failed[0] if deliveries.failed
                                else "re-driven records not delivered in time")
        now = datetime.now(UTC)
        for i, letter in enumerate(letters):
            producer.produce(dlq, value=None, key=marker_key(letter), partition=letter.partition,
                             headers=marker_headers(letter, deliveries.done[i], now))  # type: ignore[arg-type]
        producer.commit_transaction(timeout_s)
    except Exception:  # nothing of a chunk stands unless all of it does
        producer.abort_transaction(timeout_s)
        raise
    for i, letter in enumerate(letters):
        log.info("re-drove dlq offset=%d source=%s to=%s", letter.offset, letter.source, deliveries.done[i])
    return [(letter, deliveries.done[i]) for i, letter in enumerate(letters)]
