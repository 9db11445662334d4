"""Dead letters: what a consumer could not decode or validate, kept whole.

A message on ``esper.dlq`` is the original record unchanged (value, key) with the original
record's headers (Kafka Connect's convention) and the ``esper.dlq.*`` headers below beside them.
Re-driving a dead letter (``esper dlq redrive``) is recorded on the DLQ itself: a marker record
(no value) carrying ``esper.dlq.redrive_of``, on the dead letter's partition.
"""

from __future__ import annotations

from pydantic import Field

from contracts._base import Contract, UtcDatetime, utc_now

# Header names carried by every message on ``esper.dlq``; the value is the
# original bytes unchanged and the key the original key.
DLQ_HEADER_TOPIC = "esper.dlq.topic"
DLQ_HEADER_PARTITION = "esper.dlq.partition"
DLQ_HEADER_OFFSET = "esper.dlq.offset"
DLQ_HEADER_REASON = "esper.dlq.reason"
DLQ_HEADER_ERROR_TYPE = "esper.dlq.error_type"
DLQ_HEADER_GROUP = "esper.dlq.group"
DLQ_HEADER_FAILED_AT = "esper.dlq.failed_at"
# The headers a dead letter adds; an original header of the same name is not copied (it would be ambiguous).
DLQ_HEADERS = frozenset({DLQ_HEADER_TOPIC, DLQ_HEADER_PARTITION, DLQ_HEADER_OFFSET, DLQ_HEADER_REASON,
                         DLQ_HEADER_ERROR_TYPE, DLQ_HEADER_GROUP, DLQ_HEADER_FAILED_AT})

# On a re-driven record (on its source topic): the dead letter it came from, ``DLQ_TOPIC:PARTITION:OFFSET``.
DLQ_HEADER_REDRIVEN_FROM = "esper.dlq.redriven_from"
# On a re-drive marker (on the DLQ): the offset of the dead letter re-driven (same partition), where the
# record went (``TOPIC:PARTITION:OFFSET``) and when.
DLQ_HEADER_REDRIVE_OF = "esper.dlq.redrive_of"
DLQ_HEADER_REDRIVEN_TO = "esper.dlq.redriven_to"
DLQ_HEADER_REDRIVEN_AT = "esper.dlq.redriven_at"


class DeadLetter(Contract):
    source_topic: str = Field(min_length=1, max_length=249)
    source_partition: int = Field(ge=0)
    source_offset: int = Field(ge=0)
    reason: str = Field(min_length=1, max_length=4000)
    error_type: str = Field(min_length=1, max_length=100)
    consumer_group: str = Field(default="", max_length=255)
    original_key: bytes | None = None
    original_value: bytes | None = None
    failed_at: UtcDatetime = Field(default_factory=utc_now)
