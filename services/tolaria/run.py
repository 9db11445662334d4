"""A Tolaria run: train, stream every fact onto Kafka, apply commands at epoch boundaries, checkpoint.

Order at each epoch boundary (what makes ``--resume`` after ``kill -9`` exact):
1. apply due commands and the lifecycle mechanics (transitions, field reports): ``EpochBoundary``;
2. publish health signals, transitions, field reports and EpochCompleted, then flush: ``RunPublisher``;
3. write the checkpoint (weights, optimizer, seeds, applied command ids, log positions): ``CheckpointMeta``;
4. commit the command consumer's offsets.
A crash before 3 redoes the epoch from the previous checkpoint; events of that epoch
that did reach the log are found by reading the log back and are not published again.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import torch

from contracts import BlueprintArchitecture, SeedState, SessionStatus
from services.core.errors import EsperError
from services.oona.consumer import Delivered
from services.tolaria.checkpoint import (
    BudgetRecord,
    Checkpoint,
    CheckpointMeta,
    CheckpointStatus,
    PendingCommand,
    checkpoint_path,
    keep_epoch,
    load_checkpoint,
    save_checkpoint,
)
from services.tolaria.command_intake import CommandIntake
from services.tolaria.commands import CommandApplier
from services.tolaria.config import ConfigError, RunConfig
from services.tolaria.epoch_boundary import EpochBoundary, EpochResult
from services.tolaria.fork import ForkRequest, load_fork_point
from services.tolaria.models import parameter_count
from services.tolaria.progress_report import ProgressReporter, progress_reporter
from services.tolaria.publisher import RunPublisher
from services.tolaria.run_clients import RunClients, connect
from services.tolaria.session_event import session_event
from services.tolaria.system_load import system_load
from services.tolaria.training_setup import TrainingSetup, build_training, restore

log = logging.getLogger(__name__)

_RUN_ID = re.compile(r"^[A-Za-z0-9._-]{1,80}$")


class TolariaError(EsperError):
    pass


@dataclass
class RunResult:
    run_id: str
    epochs: int
    validation_accuracy: float
    test_accuracy: float
    parameter_count: int
    seed_parameter_count: int
    events_emitted: int
    events_skipped: int
    seed_states: dict[str, int] = field(default_factory=dict)
    # (host layer path, kernel architecture) of every seed fossilized at the end: the grown network
    fossils: list[tuple[str, BlueprintArchitecture]] = field(default_factory=list)


def new_run_id(name: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"{re.sub(r'[^A-Za-z0-9._-]', '-', name)[:40]}-{stamp}-{uuid.uuid4().hex[:4]}"


class TolariaRun:
    def __init__(self, cfg: RunConfig, settings, run_id: str, *, no_adapt: bool = False,
                 resume: Checkpoint | None = None, progress: bool = True, fork: bool = False) -> None:
        if not _RUN_ID.match(run_id):
            raise ConfigError(f"run id {run_id!r} must be 1-80 characters of letters, digits, '.', '_' or '-'")
        self.cfg = cfg
        self.settings = settings
        self.run_id = run_id
        self.no_adapt = no_adapt or not cfg.adaptation.enabled
        self.resume = resume
        self.fork = fork  # ``resume`` is a parent's checkpoint made the start of this new run (``fork.forked``)
        self.progress = progress

    def slot_shapes(self) -> dict[str, tuple[list[int], list[int]]]:
        """Input and output shape of every seed slot (builds the model; connects to nothing)."""
        return build_training(self.cfg, adapt=not self.no_adapt).slot_shapes()

    def run(self) -> RunResult:
        start = self.resume.meta.next_epoch if self.resume is not None else 0
        with progress_reporter(self.run_id, self.cfg.epochs, start, self.progress) as reporter:
            return self.execute(reporter)

    def execute(self, reporter: ProgressReporter | None = None) -> RunResult:
        reporter = reporter or ProgressReporter(self.run_id, self.cfg.epochs, self.progress)
        setup = build_training(self.cfg, adapt=not self.no_adapt)
        start_epoch = 0
        if self.resume is not None:
            restore(setup, self.resume)
            start_epoch = self.resume.meta.next_epoch
        clients = connect(self.settings, self.run_id, adapt=not self.no_adapt)
        try:
            return _RunLoop(self, setup, clients, reporter, start_epoch).run()
        finally:
            clients.close()


class _RunLoop:
    """One execution of a run: its model, its clients and the steps of every epoch."""

    def __init__(self, run: TolariaRun, setup: TrainingSetup, clients: RunClients, reporter: ProgressReporter,
                 start_epoch: int) -> None:
        self.run_id = run.run_id
        self.cfg = run.cfg
        self.settings = run.settings
        self.no_adapt = run.no_adapt
        self.resume = run.resume
        self.fork = run.fork
        self.setup = setup
        self.clients = clients
        self.reporter = reporter
        self.start_epoch = start_epoch  # after a resume, the checkpoint's next epoch
        self.publisher = RunPublisher(clients.emitter, clients.commands)
        a = self.cfg.adaptation
        self.intake = CommandIntake(clients.commands, self.run_id, clients.decisions_spec.name,
                                    0.0 if self.no_adapt else a.controller_wait_s, decided_epoch=start_epoch - 1)
        trainer = setup.trainer
        applier = CommandApplier(setup.manager, clients.library, setup.budget, a.kernel_wait_s,
                                 trainer.rebuild_optimizer, trainer.gradient_probe_loss)
        self.boundary = EpochBoundary(
            self.run_id, setup.model, setup.manager, applier, setup.budget, trainer.val_evaluation,
            trainer.rebuild_optimizer, epochs=self.cfg.epochs, telemetry_every_epochs=self.cfg.telemetry.every_epochs,
            checkpoint_every_epochs=self.cfg.checkpoint_every_epochs,
        )

    def run(self) -> RunResult:
        setup, emitter, start_epoch = self.setup, self.clients.emitter, self.start_epoch
        pending: list[Delivered] = []
        try:
            if self.resume is not None:
                if not self.fork:  # a fork's own log starts empty: nothing of it to read back
                    emitter.read_back(self.resume.meta.log_positions)
                pending = [self.clients.pending_command(p) for p in self.resume.meta.pending_commands]
                self._publish_session(SessionStatus.RUNNING, "forked" if self.fork else "resumed", start_epoch)
            else:
                self._publish_session(SessionStatus.RUNNING, "started")
            val_acc = setup.trainer.val_accuracy()  # what a run resumed after its last epoch reports
            for epoch in range(start_epoch, self.cfg.epochs):
                val_acc, pending = self._epoch(epoch, pending)
            test_loss, test_acc = setup.trainer.evaluate("test")
            self._publish_session(SessionStatus.COMPLETED, "completed", final_val=val_acc, final_test=test_acc)
            self._checkpoint(self.cfg.epochs, pending, CheckpointStatus.COMPLETED)
            manager = setup.manager
            counts = {s.value: n for s, n in manager.counts().items() if n}
            fossils = [(manager.slot(s).layer_name, manager.kernel_info[s].architecture) for s in manager.seed_ids()
                       if manager.state(s) is SeedState.FOSSILIZED and s in manager.kernel_info]
            return RunResult(self.run_id, self.cfg.epochs, val_acc, test_acc, parameter_count(setup.model),
                             manager.seed_parameter_count(), emitter.emitted, emitter.skipped, counts, fossils)
        except KeyboardInterrupt:
            self._publish_session(SessionStatus.PAUSED, "paused", error="interrupted; resume with --resume")
            raise
        except Exception as exc:
            if not isinstance(exc, EsperError):
                log.exception("run failed run_id=%s", self.run_id)
            self._publish_session(SessionStatus.FAILED, "failed", error=f"{type(exc).__name__}: {exc}"[:2000])
            raise

    def _epoch(self, epoch: int, pending: list[Delivered]) -> tuple[float, list[Delivered]]:
        trainer = self.setup.trainer
        torch.manual_seed(self.cfg.seed * 7919 + epoch)  # same randomness whether resumed or not
        grower, growing_s = self.setup.grower, 0.0
        if grower is not None:
            started = time.perf_counter()
            if grower.before_epoch(epoch, trainer.train_split.x, trainer.train_split.y):
                trainer.rebuild_optimizer()  # the grown layers are new parameters
            growing_s = time.perf_counter() - started
        lr = trainer.set_epoch_lr(epoch)
        stats = trainer.train_epoch(epoch, self.reporter.batch_callback(epoch))
        if growing_s:  # a peer's growth is part of its training time (epoch_seconds), as a seed's training pass is
            stats = dataclasses.replace(stats, seconds=stats.seconds + growing_s)
        val_loss, val_acc = trainer.evaluate("val")
        if not (math.isfinite(stats.train_loss) and math.isfinite(val_loss)):
            # Nothing of this epoch can be reported (the contracts refuse non-finite numbers), nor trained on.
            raise TolariaError(f"run {self.run_id} diverged in epoch {epoch}: training loss {stats.train_loss}, "
                               f"validation loss {val_loss} (try a lower optimizer.lr than {lr:g})")
        result = EpochResult(epoch, stats, val_loss, val_acc, lr)

        outcome = self.boundary.step(result, pending + self.intake.poll(epoch), system_load())
        self.publisher.publish(outcome)
        if outcome.checkpoint:
            self._checkpoint(epoch + 1, outcome.later, CheckpointStatus.RUNNING)
            self.publisher.commit_commands()
        self.reporter.epoch_done(epoch, stats, val_acc, outcome.transitions, self.setup.manager.counts())
        return val_acc, outcome.later

    def _checkpoint(self, next_epoch: int, pending: list[Delivered], status: CheckpointStatus) -> None:
        setup, budget = self.setup, self.setup.budget
        meta = CheckpointMeta(
            run_id=self.run_id, config=self.cfg, no_adapt=self.no_adapt, next_epoch=next_epoch, status=status,
            kernels=setup.manager.kernel_records(),
            budget=BudgetRecord(germinations=budget.germinations, applied=list(budget.applied),
                                last_germination_epoch=budget.last_germination_epoch),
            log_positions=self.publisher.log_positions(),
            pending_commands=[PendingCommand.of(d) for d in pending],
        )
        save_checkpoint(checkpoint_path(self.settings.state_dir, self.run_id),
                        Checkpoint(setup.model.state_dict(), setup.trainer.optimizer.state_dict(), meta))
        keep_epoch(self.settings.state_dir, self.run_id, next_epoch - 1, self.cfg.checkpoint_keep_epochs)

    def _publish_session(self, status: SessionStatus, phase: str, *about: object, error: str | None = None,
                         final_val: float | None = None, final_test: float | None = None) -> None:
        event = session_event(self.run_id, self.cfg, self.setup, not self.no_adapt, status, error=error,
                              final_val=final_val, final_test=final_test)
        self.publisher.publish_session(event, phase, *about)


def start_run(cfg: RunConfig, settings, *, run_id: str | None = None, no_adapt: bool = False,
              progress: bool = True) -> RunResult:
    run_id = run_id or new_run_id(cfg.name + ("-noadapt" if no_adapt else ""))
    if checkpoint_path(settings.state_dir, run_id).exists():
        raise ConfigError(f"run {run_id} already exists; use --resume {run_id} or another --run-id")
    return TolariaRun(cfg, settings, run_id, no_adapt=no_adapt, progress=progress).run()


def fork_run(request: ForkRequest, settings, *, run_id: str | None = None, progress: bool = True) -> RunResult:
    """A new run from the parent's state at the end of ``request.at_epoch`` (``services.tolaria.fork``)."""
    run_id = run_id or new_run_id(f"{request.parent_run_id[:24]}-fork{request.at_epoch}")
    if not _RUN_ID.match(run_id):
        raise ConfigError(f"run id {run_id!r} must be 1-80 characters of letters, digits, '.', '_' or '-'")
    start = load_fork_point(settings.state_dir, run_id, request)
    return TolariaRun(start.meta.config, settings, run_id, no_adapt=start.meta.no_adapt, resume=start,
                      progress=progress, fork=True).run()


def resume_run(run_id: str, settings, *, progress: bool = True) -> RunResult:
    checkpoint = load_checkpoint(checkpoint_path(settings.state_dir, run_id))
    if checkpoint.meta.status is CheckpointStatus.COMPLETED:
        raise TolariaError(f"run {run_id} already completed")
    return TolariaRun(checkpoint.meta.config, settings, run_id, no_adapt=checkpoint.meta.no_adapt,
                      resume=checkpoint, progress=progress).run()
