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
    # v5: a run's lineage and its controller. A fork (`esper run --fork PARENT --at-epoch K`) names its
    # parent run, the parent epoch whose end it starts from, and where the parent's log stood then
    # ("topic:partition" -> end offset after epoch K's events); absent for a run that is no fork.
    # ``policy_version``: the Tamiyo policy version the run asked for (None: the promoted one).
    parent_run_id: str | None = Field(default=None, max_length=80, description="The run this one was forked from")
    fork_epoch: int | None = Field(default=None, ge=0, description="The parent's epoch at whose end the fork starts")
    parent_log_position: dict[str, int] = Field(
        default_factory=dict, description="topic:partition -> the parent's end offset at the fork point"
    )
    policy_version: str | None = Field(default=None, max_length=80, description="Tamiyo policy version asked for")
    # v6: how Tamiyo chooses the run's germinations. ``controller``: None or "policy" (the policy version's
    # GNN), "heuristic" (the teacher's rule the shipped policy imitates), "random" (random slot, kernel and
    # epoch, as many germinations as the budget left at the start). ``exploration``: with the policy, the
    # chance per epoch that a germination is chosen at random instead (recorded as ``explored`` on the decision).
    controller: str | None = Field(default=None, max_length=40, description="policy, heuristic or random")
    exploration: float = Field(default=0.0, ge=0, le=1, description="chance per epoch of a random germination")
