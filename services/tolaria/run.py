"""A Tolaria run: train, stream every fact onto Kafka, apply commands at epoch boundaries, checkpoint.

Order at each epoch boundary (what makes ``--resume`` after ``kill -9`` exact):
1. apply due commands and the lifecycle mechanics (transitions, field reports);
2. publish health signals, transitions, field reports and EpochCompleted, then flush;
3. write the checkpoint (weights, optimizer, seeds, applied command ids, log positions);
4. commit the command consumer's offsets.
A crash before 3 redoes the epoch from the previous checkpoint; events of that epoch
that did reach the log are found by reading the log back and are not published again.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import pairwise
from pathlib import Path

import torch

from contracts import (
    EpochCompleted,
    FieldReport,
    KasminaCommand,
    LayerEdge,
    LayerSpec,
    ModelSpec,
    Seed,
    SeedTransition,
    SessionStatus,
    SystemStatePacket,
    TopicName,
    TrainingSession,
    TrainingSessionEvent,
    TrainingSpec,
)
from services.blueprints.modules import build_module
from services.kasmina.seed_manager import LifecycleSettings, SeedManager
from services.kasmina.seed_slot import KasminaError
from services.kasmina.wrap import wrap_layers
from services.oona.admin import ensure_topics, wait_for_broker
from services.oona.codec import make_codec
from services.oona.consumer import Delivered, OonaConsumer
from services.core.errors import EsperError
from services.oona.producer import OonaProducer
from services.oona.topic_registry import topic_spec
from services.tolaria.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint
from services.tolaria.commands import AdaptationBudget, CommandApplier, CommandRejected
from services.tolaria.config import ConfigError, RunConfig
from services.tolaria.data import DataError, load_dataset
from services.tolaria.emitter import BROKER_OUTAGE_S, RunEmitter
from services.tolaria.models import build_host, parameter_count
from services.tolaria.trainer import Trainer, pick_device
from services.urza.kernel_library import KernelLibrary

log = logging.getLogger(__name__)

EMITTED_TOPICS = (
    TopicName.TRAINING_SESSIONS, TopicName.TELEMETRY_SEED_HEALTH, TopicName.SYSTEM_EVENTS_EPOCH,
    TopicName.LIFECYCLE_SEED_TRANSITIONS, TopicName.INNOVATION_FIELD_REPORTS,
)
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


def new_run_id(name: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{re.sub(r'[^A-Za-z0-9._-]', '-', name)[:40]}-{stamp}-{uuid.uuid4().hex[:4]}"


def _system_load() -> tuple[float, float]:
    try:
        load = os.getloadavg()[0] / max(1, os.cpu_count() or 1)
    except OSError:
        load = 0.0
    memory = 0.0
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
        total = float(info["MemTotal"].split()[0])
        available = float(info["MemAvailable"].split()[0])
        memory = 1.0 - available / total
    except (OSError, KeyError, ValueError):
        pass
    return min(1.0, max(0.0, load)), min(1.0, max(0.0, memory))


class TolariaRun:
    def __init__(self, cfg: RunConfig, settings, run_id: str, *, no_adapt: bool = False, resume: dict | None = None,
                 progress: bool = True) -> None:
        if not _RUN_ID.match(run_id):
            raise ConfigError(f"run id {run_id!r} must be 1-80 characters of letters, digits, '.', '_' or '-'")
        self.cfg = cfg
        self.settings = settings
        self.run_id = run_id
        self.no_adapt = no_adapt or not cfg.adaptation.enabled
        self.resume = resume
        self.progress = progress

    # -- setup ------------------------------------------------------------------------------------
    def _build(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        self.device = pick_device(cfg.device)
        try:
            self.data = load_dataset(cfg.data, cfg.seed, image=cfg.model.kind == "cnn")
        except DataError as exc:
            raise ConfigError(f"data: {exc}") from None
        try:
            self.model = build_host(cfg.model, self.data.sample_shape, self.data.num_classes)
        except ValueError as exc:
            raise ConfigError(f"model: {exc}") from None
        self.host_parameters = parameter_count(self.model)
        try:
            self.slots = wrap_layers(self.model, cfg.seeds.target_layers, cfg.seeds.per_layer,
                                     cfg.telemetry.sample_every_steps)
        except KasminaError as exc:
            raise ConfigError(f"seeds.target_layers: {exc}") from None
        a = cfg.adaptation
        self.manager = SeedManager(self.slots, LifecycleSettings(
            training_epochs=a.training_epochs, grafting_steps=a.grafting_steps, embargo_epochs=a.embargo_epochs,
            min_contribution=a.min_contribution, auto_advance=a.auto_advance,
        ))
        self.trainer = Trainer(self.model, self.manager, self.data, cfg, self.device)
        with torch.no_grad():  # record every slot's shapes (needed to check kernels) with one sample
            self.model.eval()
            self.model(self.data.train.x[:2].to(self.device))
            self.model.train()
        self.budget = AdaptationBudget(enabled=not self.no_adapt, budget=a.budget, cooldown_epochs=a.cooldown_epochs)

    def slot_shapes(self) -> dict[str, tuple[list[int], list[int]]]:
        """Input and output shape of every seed slot (builds the model; connects to nothing)."""
        self._build()
        return {name: (slot.input_shape or [], slot.output_shape or []) for name, slot in self.slots.items()}

    def _connect(self) -> None:
        kafka = self.settings.kafka
        wait_for_broker(kafka)
        prefix = kafka.topic_prefix
        self.topics = {t.value: topic_spec(t.value, prefix) for t in EMITTED_TOPICS}
        self.commands_spec = topic_spec(TopicName.CONTROL_KASMINA_COMMANDS.value, prefix)
        self.library_spec = topic_spec(TopicName.LIBRARY_KERNELS.value, prefix)
        self.dlq_spec = topic_spec(TopicName.DLQ.value, prefix)
        ensure_topics(kafka, [*self.topics.values(), self.commands_spec,
                              topic_spec(TopicName.CONTROL_TAMIYO_DECISIONS.value, prefix), self.library_spec, self.dlq_spec])
        self.codec = make_codec(kafka.schema_registry_url)
        self.producer = OonaProducer(kafka, self.codec)
        self.emitter = RunEmitter(kafka, self.producer, self.codec, self.topics, self.run_id)
        self.decisions_spec = topic_spec(TopicName.CONTROL_TAMIYO_DECISIONS.value, prefix)
        self.commands = OonaConsumer(kafka, self.codec, group_id=f"tolaria.{self.run_id}",
                                     topics=[self.commands_spec, self.decisions_spec],
                                     dead_letters=self.producer, dlq_topic=self.dlq_spec.name)
        self.commands.wait_for_assignment()
        self.library = None if self.no_adapt else KernelLibrary(kafka, self.codec, self.library_spec,
                                                                self.settings.state_dir / "blobs")
        self.applier = CommandApplier(self.manager, self.library, self.budget, self.cfg.adaptation.kernel_wait_s,
                                      self.trainer.rebuild_optimizer)

    def _restore(self, meta: dict, model_state: dict, optimizer_state: dict) -> None:
        self.manager.restore_kernels(meta["kernels"], build_module)
        self.model.load_state_dict(model_state)
        self.manager.after_load()
        self.trainer.rebuild_optimizer()
        self.trainer.optimizer.load_state_dict(optimizer_state)
        b = meta["budget"]
        self.budget.germinations = b["germinations"]
        self.budget.last_germination_epoch = b["last_germination_epoch"]
        self.budget.applied = list(b["applied"])

    # -- the run -----------------------------------------------------------------------------------
    def execute(self) -> RunResult:
        self._build()
        start_epoch = 0
        pending: list[Delivered] = []
        if self.resume is not None:
            model_state, optimizer_state, meta = self.resume["model"], self.resume["optimizer"], self.resume["meta"]
            self._restore(meta, model_state, optimizer_state)
            start_epoch = meta["next_epoch"]
            self._decided_epoch = start_epoch - 1
        self._connect()
        try:
            if self.resume is not None:
                self.emitter.read_back({t: {int(p): o for p, o in parts.items()}
                                        for t, parts in self.resume["meta"]["log_positions"].items()})
                pending = [self._pending_from(p) for p in self.resume["meta"]["pending_commands"]]
                self._emit_session(SessionStatus.RUNNING, "resumed", start_epoch)
            else:
                self._emit_session(SessionStatus.RUNNING, "started")
            self.emitter.flush()
            val_acc = self.trainer.val_accuracy()  # what a run resumed after its last epoch reports
            for epoch in range(start_epoch, self.cfg.epochs):
                val_acc, pending = self._epoch(epoch, pending)
            test_loss, test_acc = self.trainer.evaluate("test")
            self._emit_session(SessionStatus.COMPLETED, "completed", final_val=val_acc, final_test=test_acc)
            self.emitter.flush()
            self._checkpoint(self.cfg.epochs, pending, status="completed")
            counts = {s.value: n for s, n in self.manager.counts().items() if n}
            return RunResult(self.run_id, self.cfg.epochs, val_acc, test_acc, parameter_count(self.model),
                             self.manager.seed_parameter_count(), self.emitter.emitted, self.emitter.skipped, counts)
        except KeyboardInterrupt:
            self._emit_session(SessionStatus.PAUSED, "paused", error="interrupted; resume with --resume")
            self.emitter.flush()
            raise
        except Exception as exc:
            if not isinstance(exc, EsperError):
                log.exception("run failed run_id=%s", self.run_id)
            self._emit_session(SessionStatus.FAILED, "failed", error=f"{type(exc).__name__}: {exc}"[:2000])
            self.emitter.flush()
            raise
        finally:
            self.commands.close()
            if self.library is not None:
                self.library.close()

    def _epoch(self, epoch: int, pending: list[Delivered]) -> tuple[float, list[Delivered]]:
        torch.manual_seed(self.cfg.seed * 7919 + epoch)  # same randomness whether resumed or not
        lr = self.trainer.set_epoch_lr(epoch)
        stats = self.trainer.train_epoch(epoch, self._batch_progress(epoch))
        val_loss, val_acc = self.trainer.evaluate("val")

        pending = pending + self._poll_commands(epoch)
        transitions, reports, later = [], [], []
        causes: dict[str, str] = {}
        for delivered in pending:
            command: KasminaCommand = delivered.message.payload
            if command.issued_at_epoch > epoch:
                later.append(delivered)
                continue
            if command.command_id in self.budget.applied:
                continue  # applied before the checkpoint we resumed from
            # A command that fails unexpectedly (a kernel that will not build) is dead-lettered; the run goes on.
            applied = self.commands.handle_isolated(delivered, lambda d: self._apply(d, epoch, val_acc))
            if applied is not None:
                causes[command.command_id] = delivered.message.event_id
                transitions += applied[0]
                reports += applied[1]
        t, r = self.manager.end_of_epoch(epoch, self.trainer.val_accuracy, val_acc)
        if t:
            self.trainer.rebuild_optimizer()
        transitions += t
        reports += r

        emit = self.emitter.emit
        every = self.cfg.telemetry.every_epochs
        signals = []
        if (epoch + 1) % every == 0 or epoch + 1 == self.cfg.epochs:  # statistics accumulate in between
            signals = self.manager.health_signals(epoch)
        for signal in signals:
            emit("telemetry.seed.health", signal, "health", epoch, signal.layer_id, signal.seed_idx)
        for i, tr in enumerate(transitions):
            emit("lifecycle.seed.transitions", tr, "transition", epoch, tr.layer_id, tr.seed_idx, i,
                 tr.to_state.value, trace_id=causes.get(tr.command_id or ""))
        for rep in reports:
            emit("innovation.field_reports", rep, "field_report", epoch, rep.layer_id, rep.seed_idx, rep.outcome.value)
        counts = self.manager.counts()
        load, memory = _system_load()
        emit("system.events.epoch", EpochCompleted(
            state=SystemStatePacket(
                epoch=epoch, total_seeds=sum(counts.values()), active_seeds=self.manager.active_count(),
                training_loss=stats.train_loss, validation_loss=val_loss, system_load=load, memory_usage=memory,
            ),
            train_accuracy=stats.train_accuracy, validation_accuracy=val_acc, epoch_seconds=stats.seconds,
            samples_per_second=stats.samples_per_second, parameter_count=parameter_count(self.model),
            seed_parameter_count=self.manager.seed_parameter_count(), learning_rate=lr,
            health_signals=len(signals), seed_transitions=len(transitions), field_reports=len(reports),
        ), "epoch", epoch)
        self.emitter.flush()
        if (epoch + 1) % self.cfg.checkpoint_every_epochs == 0:
            self._checkpoint(epoch + 1, later)
            self.commands.commit(timeout_s=BROKER_OUTAGE_S)
        self._report_epoch(epoch, stats, val_acc, transitions)
        return val_acc, later

    def _apply(self, delivered: Delivered, epoch: int, val_acc: float
               ) -> tuple[list[SeedTransition], list[FieldReport]] | None:
        """Apply one due command; None when it is rejected (and dead-lettered as such)."""
        command: KasminaCommand = delivered.message.payload
        try:
            result = self.applier.apply(command, epoch, self.trainer.val_accuracy, val_acc)
        except CommandRejected as exc:
            self.commands.reject(delivered, f"command {command.command_id} rejected: {exc}", "CommandRejected")
            return None
        log.info("command applied run_id=%s command_id=%s action=%s seed=%s:%s", self.run_id,
                 command.command_id, command.action.value, command.layer_id, command.seed_idx)
        return result

    # The controller's last decided epoch seen; -1 before any. A resumed run assumes its past was decided.
    _decided_epoch = -1
    _controller_timed_out = False

    def _poll_commands(self, epoch: int) -> list[Delivered]:
        """Every command published for this run before this boundary.

        With ``controller_wait_s``, first wait (bounded) until the controller has decided on the
        previous epoch, so that its commands meet the boundary they were meant for.
        """
        wait_s = 0.0 if self.no_adapt or self._controller_timed_out else self.cfg.adaptation.controller_wait_s
        deadline = time.monotonic() + wait_s
        commands = []
        batch = self.commands.catch_up(timeout_s=BROKER_OUTAGE_S)
        while True:
            for d in batch:
                if d.message.run_id != self.run_id:
                    continue
                if d.topic == self.decisions_spec.name:
                    self._decided_epoch = max(self._decided_epoch, d.message.payload.epoch)
                else:
                    commands.append(d)
            remaining = deadline - time.monotonic()
            if epoch == 0 or self._decided_epoch >= epoch - 1 or remaining <= 0:
                break
            batch = self.commands.consume(100, min(0.1, remaining))  # blocks until something arrives
        if wait_s and epoch > 0 and self._decided_epoch < epoch - 1:
            self._controller_timed_out = True
            log.warning("no controller decision for epoch %d of run %s within %.1fs; no longer waiting",
                        epoch - 1, self.run_id, wait_s)
        return commands

    def _pending_from(self, record: dict) -> Delivered:
        value = bytes.fromhex(record["value"])
        return Delivered(record["topic"], record["partition"], record["offset"],
                         bytes.fromhex(record["key"]) if record["key"] is not None else None,
                         self.codec.decode(self.commands_spec, value), value)

    def _checkpoint(self, next_epoch: int, pending: list[Delivered], status: str = "running") -> None:
        meta = {
            "run_id": self.run_id, "config": self.cfg.model_dump(mode="json"), "no_adapt": self.no_adapt,
            "next_epoch": next_epoch, "status": status, "kernels": self.manager.kernel_records(),
            "budget": {"germinations": self.budget.germinations, "applied": self.budget.applied,
                       "last_germination_epoch": self.budget.last_germination_epoch},
            "log_positions": self.emitter.log_positions(),
            "pending_commands": [
                {"topic": d.topic, "partition": d.partition, "offset": d.offset,
                 "key": d.key.hex() if d.key is not None else None, "value": d.value.hex()} for d in pending
            ],
        }
        save_checkpoint(checkpoint_path(self.settings.state_dir, self.run_id), self.model.state_dict(),
                        self.trainer.optimizer.state_dict(), meta)

    def _emit_session(self, status: SessionStatus, phase: str, *about: object, error: str | None = None,
                      final_val: float | None = None, final_test: float | None = None) -> None:
        cfg = self.cfg
        seeds = [
            Seed(layer_id=s.layer_id, seed_idx=s.seed_idx, layer_name=self.manager.slot(s).layer_name,
                 state=self.manager.state(s),
                 blueprint_id=(self.manager.kernel_info[s].blueprint_id if s in self.manager.kernel_info else None))
            for s in self.manager.seed_ids()
        ]
        # The host models are sequential, so data flows through the seeded layers in module order.
        layers = [
            LayerSpec(name=slot.layer_name, layer_id=slot.layer_id,
                      kind="conv2d" if isinstance(slot.host, torch.nn.Conv2d) else "linear",
                      input_shape=slot.input_shape or [], output_shape=slot.output_shape or [],
                      parameters=sum(p.numel() for p in slot.host.parameters()))
            for slot in self.slots.values()
        ]
        session = TrainingSession(
            session_id=self.run_id, name=cfg.name, description=cfg.description,
            training_model_config=ModelSpec(
                architecture=cfg.model.kind, input_shape=self.data.sample_shape, num_classes=self.data.num_classes,
                hidden_sizes=cfg.model.hidden if cfg.model.kind == "mlp" else cfg.model.channels,
                target_layers=cfg.seeds.target_layers, seeds_per_layer=cfg.seeds.per_layer,
                parameter_count=self.host_parameters, layers=layers,
                topology=[LayerEdge(source=a.name, target=b.name) for a, b in pairwise(layers)],
            ),
            training_config=TrainingSpec(
                dataset=cfg.data.dataset, epochs=cfg.epochs, batch_size=cfg.batch_size, learning_rate=cfg.optimizer.lr,
                optimizer=cfg.optimizer.name, random_seed=cfg.seed, device=str(self.device),
                adaptation_enabled=not self.no_adapt, adaptation_budget=cfg.adaptation.budget,
                cooldown_epochs=cfg.adaptation.cooldown_epochs, auto_advance=cfg.adaptation.auto_advance,
            ),
            seeds=seeds, status=status,
        )
        self.emitter.emit("training.sessions", TrainingSessionEvent(
            session=session, error=error, final_validation_accuracy=final_val, final_test_accuracy=final_test,
        ), "session", phase, *about)

    # -- progress ---------------------------------------------------------------------------------
    _bar = None  # (rich Progress, task id) while a progress bar is shown

    def _batch_progress(self, epoch: int):
        if self._bar is None:
            return None
        bar, task = self._bar

        def update(step: int, steps: int) -> None:
            bar.update(task, completed=epoch + step / steps)

        return update

    def _report_epoch(self, epoch: int, stats, val_acc: float, transitions) -> None:
        counts = ", ".join(f"{n} {s.value}" for s, n in self.manager.counts().items() if n and s.value != "dormant")
        line = (f"epoch {epoch + 1}/{self.cfg.epochs} loss={stats.train_loss:.4f} train_acc={stats.train_accuracy:.3f} "
                f"val_acc={val_acc:.3f}" + (f" seeds: {counts}" if counts else ""))
        if self._bar is not None:
            bar, task = self._bar
            bar.update(task, completed=epoch + 1, description=f"{self.run_id} val_acc={val_acc:.3f}")
            for t in transitions:
                bar.console.print(f"  epoch {epoch + 1}: seed {t.layer_name}[{t.seed_idx}] "
                                  f"{t.from_state.value} -> {t.to_state.value} ({t.reason})")
        elif self.progress:
            print(line, flush=True)

    def run(self) -> RunResult:
        if self.progress and sys.stderr.isatty():
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed:.1f}/{task.total}"),
                          TimeRemainingColumn(), transient=False) as bar:
                start = self.resume["meta"]["next_epoch"] if self.resume else 0
                self._bar = (bar, bar.add_task(self.run_id, total=self.cfg.epochs, completed=start))
                return self.execute()
        return self.execute()


def start_run(cfg: RunConfig, settings, *, run_id: str | None = None, no_adapt: bool = False,
              progress: bool = True) -> RunResult:
    run_id = run_id or new_run_id(cfg.name + ("-noadapt" if no_adapt else ""))
    if checkpoint_path(settings.state_dir, run_id).exists():
        raise ConfigError(f"run {run_id} already exists; use --resume {run_id} or another --run-id")
    return TolariaRun(cfg, settings, run_id, no_adapt=no_adapt, progress=progress).run()


def resume_run(run_id: str, settings, *, progress: bool = True) -> RunResult:
    model_state, optimizer_state, meta = load_checkpoint(checkpoint_path(settings.state_dir, run_id))
    if meta["status"] == "completed":
        raise TolariaError(f"run {run_id} already completed")
    cfg = RunConfig.model_validate(meta["config"])
    resume = {"model": model_state, "optimizer": optimizer_state, "meta": meta}
    return TolariaRun(cfg, settings, run_id, no_adapt=meta["no_adapt"], resume=resume, progress=progress).run()
