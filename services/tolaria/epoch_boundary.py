"""A run's epoch boundary as logic: apply the due commands and the lifecycle, and say what to publish.

``EpochBoundary.step`` changes the model (seeds germinate, graft, are culled) but touches no
Kafka client: it returns a ``BoundaryOutcome`` naming the events to publish, in order, the
commands to dead-letter with their reasons, and the commands due at a later epoch. The
publisher (``services.tolaria.publisher``) puts the outcome on the bus.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel
from torch import nn

from contracts import EpochCompleted, FieldReport, KasminaCommand, SeedTransition, SystemStatePacket, TopicName
from services.kasmina.seed_manager import Evaluate, Evaluation, SeedManager
from services.oona.consumer import Delivered
from services.oona.isolation import failure_reason, is_record_failure
from services.tolaria.commands import AdaptationBudget, CommandApplier, CommandRejected
from services.tolaria.models import parameter_count
from services.tolaria.trainer import EpochStats

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Emission:
    """One event to publish: ``about`` (with the run and topic) makes its deterministic event id."""

    topic: str
    payload: BaseModel
    about: tuple[object, ...]
    trace_id: str | None = None


@dataclass(frozen=True)
class RejectedCommand:
    """A due command that was not applied; it goes to the DLQ with this reason."""

    delivered: Delivered
    reason: str
    error_type: str
    failure: Exception | None = None  # set when applying raised unexpectedly (a kernel that will not build)


@dataclass(frozen=True)
class EpochResult:
    """What training and validation of one epoch measured."""

    epoch: int
    stats: EpochStats
    val_loss: float
    val_accuracy: float
    learning_rate: float


@dataclass(frozen=True)
class BoundaryOutcome:
    events: list[Emission]  # in publishing order: health signals, transitions, field reports, EpochCompleted
    rejected: list[RejectedCommand]
    later: list[Delivered]  # due at a later epoch: carried to the next boundary and into the checkpoint
    transitions: list[SeedTransition]
    checkpoint: bool  # this boundary writes a checkpoint (and then commits the consumed commands)


class EpochBoundary:
    def __init__(self, run_id: str, model: nn.Module, manager: SeedManager, applier: CommandApplier,
                 budget: AdaptationBudget, evaluate: Evaluate, on_parameters_changed: Callable[[], None],
                 *, epochs: int, telemetry_every_epochs: int, checkpoint_every_epochs: int) -> None:
        self.run_id = run_id
        self.model = model
        self.manager = manager
        self.applier = applier
        self.budget = budget
        self.evaluate = evaluate  # validation loss and accuracy now (the gate compares with and without a seed)
        self.on_parameters_changed = on_parameters_changed
        self.epochs = epochs
        self.telemetry_every_epochs = telemetry_every_epochs
        self.checkpoint_every_epochs = checkpoint_every_epochs

    def step(self, result: EpochResult, commands: list[Delivered], load: tuple[float, float]) -> BoundaryOutcome:
        """Apply the due ``commands`` (pending ones first), then the lifecycle; ``load``: (system load, memory use)."""
        epoch, val_acc = result.epoch, result.val_accuracy
        current = Evaluation(result.val_loss, val_acc)
        transitions: list[SeedTransition] = []
        reports: list[FieldReport] = []
        later: list[Delivered] = []
        rejected: list[RejectedCommand] = []
        causes: dict[str, str] = {}
        for delivered in commands:
            command: KasminaCommand = delivered.message.payload
            if command.issued_at_epoch > epoch:
                later.append(delivered)
                continue
            if command.command_id in self.budget.applied:
                continue  # applied before the checkpoint we resumed from
            applied = self._apply(delivered, epoch, current, rejected)
            if applied is not None:
                causes[command.command_id] = delivered.message.event_id
                transitions += applied[0]
                reports += applied[1]
        t, r = self.manager.end_of_epoch(epoch, self.evaluate, current)
        if t:
            self.on_parameters_changed()
        transitions += t
        reports += r

        events: list[Emission] = []
        signals = []
        if (epoch + 1) % self.telemetry_every_epochs == 0 or epoch + 1 == self.epochs:  # statistics accumulate between
            signals = self.manager.health_signals(epoch)
        for signal in signals:
            events.append(Emission(TopicName.TELEMETRY_SEED_HEALTH.value, signal,
                                   ("health", epoch, signal.layer_id, signal.seed_idx)))
        for i, tr in enumerate(transitions):
            events.append(Emission(TopicName.LIFECYCLE_SEED_TRANSITIONS.value, tr,
                                   ("transition", epoch, tr.layer_id, tr.seed_idx, i, tr.to_state.value),
                                   trace_id=causes.get(tr.command_id or "")))
        for rep in reports:
            events.append(Emission(TopicName.INNOVATION_FIELD_REPORTS.value, rep,
                                   ("field_report", epoch, rep.layer_id, rep.seed_idx, rep.outcome.value)))
        counts = self.manager.counts()
        system_load, memory = load
        stats = result.stats
        events.append(Emission(TopicName.SYSTEM_EVENTS_EPOCH.value, EpochCompleted(
            state=SystemStatePacket(
                epoch=epoch, total_seeds=sum(counts.values()), active_seeds=self.manager.active_count(),
                training_loss=stats.train_loss, validation_loss=result.val_loss, system_load=system_load,
                memory_usage=memory,
            ),
            train_accuracy=stats.train_accuracy, validation_accuracy=val_acc, epoch_seconds=stats.seconds,
            samples_per_second=stats.samples_per_second, parameter_count=parameter_count(self.model),
            seed_parameter_count=self.manager.seed_parameter_count(), learning_rate=result.learning_rate,
            health_signals=len(signals), seed_transitions=len(transitions), field_reports=len(reports),
        ), ("epoch", epoch)))
        return BoundaryOutcome(events, rejected, later, transitions,
                               checkpoint=(epoch + 1) % self.checkpoint_every_epochs == 0)

    def _apply(self, delivered: Delivered, epoch: int, current: Evaluation, rejected: list[RejectedCommand]
               ) -> tuple[list[SeedTransition], list[FieldReport]] | None:
        """Apply one due command; None when it is rejected or fails (recorded in ``rejected``)."""
        command: KasminaCommand = delivered.message.payload
        try:
            result = self.applier.apply(command, epoch, self.evaluate, current)
        except CommandRejected as exc:
            rejected.append(RejectedCommand(delivered, f"command {command.command_id} rejected: {exc}",
                                            "CommandRejected"))
            return None
        except Exception as exc:
            # A command that fails unexpectedly is the record's fault: dead-lettered, and the run goes on.
            # Bus errors are not, and propagate (the rules of ``OonaConsumer.handle_isolated``).
            if not is_record_failure(exc):
                raise
            rejected.append(RejectedCommand(delivered, failure_reason(exc), type(exc).__name__, failure=exc))
            return None
        log.info("command applied run_id=%s command_id=%s action=%s seed=%s:%s", self.run_id,
                 command.command_id, command.action.value, command.layer_id, command.seed_idx)
        return result
