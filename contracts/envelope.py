"""OonaMessage: the envelope every event on the bus travels in."""

from __future__ import annotations

import uuid
from typing import Generic, TypeVar

from pydantic import BaseModel, Field

from contracts._base import Contract, UtcDatetime, utc_now

P = TypeVar("P", bound=BaseModel)

# uuid5 namespace for event ids that must come out the same when a retry or a
# resumed run re-emits the same fact.
_EVENT_NAMESPACE = uuid.UUID("6f1c9a52-3d0e-5b8e-9c43-2b7f0e8d4a11")


def new_event_id() -> str:
    return str(uuid.uuid4())


def deterministic_event_id(*parts: object) -> str:
    """The same parts give the same id in every process (uuid5)."""
    return str(uuid.uuid5(_EVENT_NAMESPACE, "/".join(str(p) for p in parts)))


class OonaMessage(Contract, Generic[P]):
    """Envelope + one typed payload. ``sender_id`` is the design's ``sender``,
    ``timestamp`` its ``occurred_at`` (UTC), ``trace_id`` the id of the causing event."""

    event_id: str = Field(default_factory=new_event_id, min_length=1, max_length=80)
    sender_id: str = Field(min_length=1, max_length=100)
    timestamp: UtcDatetime = Field(default_factory=utc_now)
    trace_id: str | None = Field(default=None, max_length=80)
    # Kafka's own rule for topic names: the envelope names where the event belongs.
    topic: str = Field(min_length=1, max_length=249, pattern=r"^[A-Za-z0-9._-]+$")
    run_id: str | None = Field(default=None, max_length=80, description="Set on run-scoped topics")
    schema_version: int = Field(default=1, ge=1)
    payload: P
