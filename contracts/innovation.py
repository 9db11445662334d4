"""Innovation plane events: submissions and field reports."""

from __future__ import annotations

from pydantic import Field, model_validator

from contracts._base import Contract
from contracts.assets import Blueprint, SeedSlotRef
from contracts.enums import FieldReportOutcome


class BlueprintSubmitted(Contract):
    blueprint_id: str = Field(min_length=1, max_length=80)
    submitted_by: str = Field(min_length=1, max_length=100)
    blueprint: Blueprint

    @model_validator(mode="after")
    def _id_is_the_blueprints(self) -> BlueprintSubmitted:
        # The blueprint's own id is its content hash (checked by Blueprint); a submission that names
        # another id must not be able to answer for, or block, the blueprint that really has it.
        if self.blueprint_id != self.blueprint.blueprint_id:
            raise ValueError(f"blueprint_id {self.blueprint_id!r} is not the id of the submitted blueprint "
                             f"({self.blueprint.blueprint_id})")
        return self


class FieldReport(SeedSlotRef):
    """What happened when a blueprint was grown in a real run."""

    blueprint_id: str = Field(min_length=1, max_length=80)
    kernel_id: str = Field(min_length=1, max_length=80)
    layer_name: str = Field(default="", max_length=255)
    pre_metric: float = Field(description="Validation accuracy before germination")
    post_metric: float = Field(description="Validation accuracy at the outcome")
    outcome: FieldReportOutcome
    epochs_active: int = Field(default=0, ge=0)
    eval_metrics: dict[str, float] = Field(default_factory=dict)
