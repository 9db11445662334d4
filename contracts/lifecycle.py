"""Record of the ``training.sessions`` topic."""

from __future__ import annotations

from pydantic import Field

from contracts._base import Contract
from contracts.assets import TrainingSession


class TrainingSessionEvent(Contract):
    """A snapshot of a session at a lifecycle change (started, resumed, completed, failed)."""

    session: TrainingSession
    error: str | None = Field(default=None, max_length=2000)
    final_validation_accuracy: float | None = Field(default=None, ge=0, le=1)
    final_test_accuracy: float | None = Field(default=None, ge=0, le=1)
