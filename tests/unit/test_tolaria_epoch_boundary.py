"""Tolaria's epoch boundary without Kafka: which commands apply, are dead-lettered or wait; what is published."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from confluent_kafka import KafkaError, KafkaException

from contracts import (
    CommandAction,
    EpochCompleted,
    HealthSignal,
    KasminaCommand,
    SeedState,
    TopicName,
    layer_id_for_path,
)
from services.blueprints.compiler import compile_blueprint
from services.blueprints.modules import build_module
from services.blueprints.starter import mlp_adapter
from services.oona.consumer import Delivered
from services.oona.topic_registry import topic_spec
from services.tolaria.commands import CommandApplier
from services.tolaria.config import parse_config
from services.tolaria.emitter import BROKER_OUTAGE_S
from services.tolaria.epoch_boundary import EpochBoundary, EpochResult
from services.tolaria.progress_report import ProgressReporter
from services.tolaria.publisher import RunPublisher
from services.tolaria.system_load import system_load
from services.tolaria.trainer import EpochStats
from services.tolaria.training_setup import build_training

RUN = "unit-run"
COMMANDS = topic_spec(TopicName.CONTROL_KASMINA_COMMANDS.value)
CONFIG = {
    "name": "unit", "epochs": 4, "batch_size": 32, "device": "cpu",
    "data": {"dataset": "spirals", "spiral_points": 40},
    "model": {"kind": "mlp", "hidden": [8]}, "seeds": {"target_layers": ["body.0"], "per_layer": 2},
    "adaptation": {"training_epochs": 2, "grafting_steps": 5}, "checkpoint_every_epochs": 2,
}
STATS = EpochStats(train_loss=0.9, train_accuracy=0.5, seconds=0.1, samples_per_second=1000.0)


class FakeLibrary:
    """The kernel library's two calls, over one compiled kernel."""

    def __init__(self) -> None:
        self.kernel, _ = compile_blueprint(mlp_adapter(2, 8, 32))

    def find(self, kernel_id, blueprint_id, wait_s=0.0):
        from services.urza.kernel_library import KernelNotFoundError

        if kernel_id != self.kernel.kernel_id:
            raise KernelNotFoundError(f"kernel {kernel_id} is not in the library")
        return self.kernel

    def load_module(self, kernel):
        return build_module(kernel.architecture)


def command(action: CommandAction, seed_idx: int, *, epoch: int = 0, command_id: str, kernel_id: str | None = None,
            offset: int = 0) -> Delivered:
    payload = KasminaCommand(command_id=command_id, action=action, layer_id=layer_id_for_path("body.0"),
                             seed_idx=seed_idx, layer_name="body.0", kernel_id=kernel_id, issued_at_epoch=epoch)
    message = COMMANDS.message_type(sender_id="tests", topic=COMMANDS.name, run_id=RUN, payload=payload)
    return Delivered(COMMANDS.name, 0, offset, RUN.encode(), message, b"raw")


def boundary(library=None):
    setup = build_training(parse_config(CONFIG), adapt=True)
    applier = CommandApplier(setup.manager, library, setup.budget, 0.0, setup.trainer.rebuild_optimizer)
    step = EpochBoundary(RUN, setup.model, setup.manager, applier, setup.budget, setup.trainer.val_evaluation,
                         setup.trainer.rebuild_optimizer, epochs=CONFIG["epochs"], telemetry_every_epochs=1,
                         checkpoint_every_epochs=CONFIG["checkpoint_every_epochs"])
    return setup, applier, step


def epoch(setup, n: int) -> EpochResult:
    stats = setup.trainer.train_epoch(n)
    val_loss, val_acc = setup.trainer.evaluate("val")
    return EpochResult(n, stats, val_loss, val_acc, 0.003)


def test_a_quiet_boundary_publishes_health_then_the_epoch_and_checkpoints_on_schedule():
    setup, _, step = boundary()
    first = step.step(epoch(setup, 0), [], (0.25, 0.5))
    assert [e.topic for e in first.events] == [TopicName.TELEMETRY_SEED_HEALTH.value] * 2 + [
        TopicName.SYSTEM_EVENTS_EPOCH.value]
    assert [e.about for e in first.events] == [("health", 0, layer_id_for_path("body.0"), 0),
                                               ("health", 0, layer_id_for_path("body.0"), 1), ("epoch", 0)]
    assert all(isinstance(e.payload, HealthSignal) for e in first.events[:2])
    completed = first.events[-1].payload
    assert isinstance(completed, EpochCompleted)
    assert (completed.state.system_load, completed.state.memory_usage, completed.health_signals) == (0.25, 0.5, 2)
    assert (completed.state.total_seeds, completed.state.active_seeds, completed.seed_transitions) == (2, 0, 0)
    assert (first.rejected, first.later, first.transitions, first.checkpoint) == ([], [], [], False)
    assert step.step(epoch(setup, 1), [], (0.0, 0.0)).checkpoint, "every checkpoint_every_epochs=2 epochs"


def test_commands_apply_wait_repeat_or_are_rejected_with_their_reasons():
    library = FakeLibrary()
    setup, _, step = boundary(library)
    setup.budget.applied.append("applied-before-the-checkpoint")
    germinate = command(CommandAction.GERMINATE, 0, command_id="germinate-0", kernel_id=library.kernel.kernel_id)
    later = command(CommandAction.CULL, 0, epoch=3, command_id="cull-later", offset=1)
    commands = [
        germinate, later,
        command(CommandAction.CULL, 1, command_id="applied-before-the-checkpoint", offset=2),
        command(CommandAction.FOSSILIZE, 1, command_id="illegal-move", offset=3),
        command(CommandAction.GERMINATE, 1, command_id="missing-kernel", kernel_id="k-missing", offset=4),
    ]
    outcome = step.step(epoch(setup, 0), commands, (0.0, 0.0))

    assert outcome.later == [later]
    assert [(r.delivered.message.payload.command_id, r.error_type, r.failure) for r in outcome.rejected] == [
        ("illegal-move", "CommandRejected", None), ("missing-kernel", "CommandRejected", None)]
    assert outcome.rejected[0].reason.startswith("command illegal-move rejected: ")
    assert "kernel k-missing is not in the library" in outcome.rejected[1].reason
    germinated = outcome.transitions[0]  # applied commands first, then the lifecycle's own moves
    assert germinated.command_id == "germinate-0"
    assert (germinated.from_state, germinated.to_state) == (SeedState.DORMANT, SeedState.GERMINATED)
    transitions = [e for e in outcome.events if e.topic == TopicName.LIFECYCLE_SEED_TRANSITIONS.value]
    assert transitions[0].payload == germinated and transitions[0].trace_id == germinate.message.event_id
    assert transitions[0].about == ("transition", 0, germinated.layer_id, 0, 0, "germinated")
    assert setup.budget.applied == ["applied-before-the-checkpoint", "germinate-0"]
    assert outcome.events[-1].payload.seed_transitions == len(outcome.transitions)


def test_a_command_that_raises_is_a_failure_to_dead_letter_and_a_bus_error_propagates(monkeypatch):
    setup, applier, step = boundary()

    def exploding(command, *args):
        raise RuntimeError("kernel would not build")

    monkeypatch.setattr(applier, "apply", exploding)
    outcome = step.step(epoch(setup, 0), [command(CommandAction.CULL, 0, command_id="explodes")], (0.0, 0.0))
    [failed] = outcome.rejected
    assert (failed.reason, failed.error_type) == ("RuntimeError: kernel would not build", "RuntimeError")
    assert isinstance(failed.failure, RuntimeError)

    def unreachable(command, *args):
        raise KafkaException(KafkaError(KafkaError._TRANSPORT))

    monkeypatch.setattr(applier, "apply", unreachable)
    with pytest.raises(KafkaException):
        step.step(epoch(setup, 1), [command(CommandAction.CULL, 0, command_id="bus-down")], (0.0, 0.0))


@dataclass
class Recorder:
    calls: list = field(default_factory=list)

    def __getattr__(self, name):
        return lambda *args, **kwargs: self.calls.append((name, args, kwargs))


def test_the_publisher_dead_letters_then_produces_in_order_then_flushes_and_commits_only_when_asked():
    setup, applier, step = boundary()
    outcome = step.step(epoch(setup, 0), [command(CommandAction.FOSSILIZE, 0, command_id="illegal")], (0.0, 0.0))
    emitter, consumer = Recorder(), Recorder()
    publisher = RunPublisher(emitter, consumer)
    publisher.publish(outcome)
    [(reject, (delivered, reason, error_type), _)] = consumer.calls
    assert (reject, delivered.message.payload.command_id, error_type) == ("reject", "illegal", "CommandRejected")
    assert [c[0] for c in emitter.calls] == ["emit"] * len(outcome.events) + ["flush"]
    assert [c[1][0] for c in emitter.calls[:-1]] == [e.topic for e in outcome.events]
    assert [c[1][2:] for c in emitter.calls[:-1]] == [e.about for e in outcome.events]
    publisher.commit_commands()
    assert consumer.calls[-1] == ("commit", (), {"timeout_s": BROKER_OUTAGE_S})


def test_the_reporter_prints_one_line_per_epoch_or_nothing_when_quiet(capsys):
    transition = []  # transitions are shown only beside a progress bar
    counts = {SeedState.DORMANT: 1, SeedState.TRAINING: 1}
    ProgressReporter(RUN, 4, enabled=True).epoch_done(1, STATS, 0.75, transition, counts)
    ProgressReporter(RUN, 4, enabled=False).epoch_done(2, STATS, 0.75, transition, counts)
    assert capsys.readouterr().out == "epoch 2/4 loss=0.9000 train_acc=0.500 val_acc=0.750 seeds: 1 training\n"
    assert ProgressReporter(RUN, 4, enabled=True).batch_callback(0) is None


def test_system_load_reads_meminfo_and_stays_in_range(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       1000 kB\nMemFree:  100 kB\nMemAvailable:    250 kB\n")
    load, memory = system_load(meminfo)
    assert memory == pytest.approx(0.75) and 0.0 <= load <= 1.0
    assert system_load(tmp_path / "missing")[1] == 0.0
    meminfo.write_text("garbage\n")
    assert system_load(meminfo)[1] == 0.0

