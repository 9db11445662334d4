"""Base class and helpers shared by every contract model."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(timezone.utc)


# Every timestamp in a contract is timezone-aware and normalised to UTC; a naive
# datetime is rejected rather than guessed at.
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]


class Contract(BaseModel):
    """Strict base: unknown fields are errors and assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
