"""The Kafka side of a run's epoch boundary: dead letters, events, flush, and the commit of the consumed commands.

Delivery rules (what makes ``--resume`` after ``kill -9`` exact; see ``services.tolaria.run``):
rejected commands are dead-lettered and the boundary's events produced, then everything is
flushed before the checkpoint is written; the command consumer's offsets are committed only
after the checkpoint (its commit flushes the dead letters first). No transaction: duplicates
that a crash could cause are prevented by deterministic event ids (``RunEmitter``) and by the
consumer's check of what is already on the DLQ.
"""

from __future__ import annotations

from contracts import TopicName, TrainingSessionEvent
from services.oona.consumer import OonaConsumer
from services.tolaria.emitter import BROKER_OUTAGE_S, LogPositions, RunEmitter
from services.tolaria.epoch_boundary import BoundaryOutcome


class RunPublisher:
    def __init__(self, emitter: RunEmitter, commands: OonaConsumer) -> None:
        self.emitter = emitter
        self.commands = commands

    def publish(self, outcome: BoundaryOutcome) -> None:
        """Dead-letter the rejected commands, produce the events in order, and flush."""
        for rejected in outcome.rejected:
            if rejected.failure is not None:
                self.commands.dead_letter_failure(rejected.delivered, rejected.failure)
            else:
                self.commands.reject(rejected.delivered, rejected.reason, rejected.error_type)
        for event in outcome.events:
            self.emitter.emit(event.topic, event.payload, *event.about, trace_id=event.trace_id)
        self.emitter.flush()

    def publish_session(self, event: TrainingSessionEvent, phase: str, *about: object) -> None:
        """A change of the run's status (started, resumed, completed, paused, failed), flushed."""
        self.emitter.emit(TopicName.TRAINING_SESSIONS.value, event, "session", phase, *about)
        self.emitter.flush()

    def log_positions(self) -> LogPositions:
        return self.emitter.log_positions()

    def commit_commands(self) -> None:
        """After the checkpoint: the consumed commands are now applied or carried in it."""
        self.commands.commit(timeout_s=BROKER_OUTAGE_S)
