"""Dead letters: what a consumer could not decode or validate, kept whole."""

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
