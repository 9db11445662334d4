"""Base class and helpers shared by every contract model.

The contracts are the one definition of "valid" for every consumer: a service validates each
decoded record with pydantic (``services/oona/codec.py``), and Nissa derives vectorised checks
of its Arrow batches from the same field metadata (``services/nissa/validity.py``). So a bound
belongs here, as ``Field`` metadata (ge/gt/le/lt, lengths, patterns), never in one consumer.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict


def utc_now() -> datetime:
    return datetime.now(UTC)


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


# Every timestamp in a contract is timezone-aware and normalised to UTC; a naive
# datetime is rejected rather than guessed at.
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]


class Contract(BaseModel):
    """Strict base: unknown fields are errors, assignments are validated, floats are finite."""

    # allow_inf_nan=False: NaN and +-inf are no measurement; every float field of every contract
    # (inside lists and maps too) rejects them, so an unbounded float cannot carry NaN into a policy.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
