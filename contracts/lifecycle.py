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
    # v3: a run started by `esper experiment` names its experiment and arm (the random seed is
    # ``session.training_config.random_seed``); absent for a plain `esper run`.
    experiment_id: str | None = Field(default=None, max_length=80, description="Experiment this run is an arm of")
    experiment_arm: str | None = Field(
        default=None, max_length=40, description="adaptive, no_adapt, static_final or static_width"
    )
    # v5: the Tamiyo policy version this run asks to be decided by (`esper run --policy VERSION`, config key
    # ``policy_version``); None: the promoted one (see services/tamiyo/policy_registry.py).
    policy_version: str | None = Field(
        default=None, max_length=100, description="Tamiyo policy version that decides this run; None: the promoted one"
    )
