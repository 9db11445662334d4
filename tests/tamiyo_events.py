"""A small recorded run as Tolaria would publish it, for Tamiyo's tests: (topic, payload) in production order."""

from __future__ import annotations

from contracts import (
    CatalogPosition,
    EpochCompleted,
    HealthSignal,
    LayerEdge,
    LayerSpec,
    ModelSpec,
    Seed,
    SeedState,
    SeedTransition,
    SessionStatus,
    SystemStatePacket,
    TopicName,
    TrainingSession,
    TrainingSessionEvent,
    TrainingSpec,
)
from services.tamiyo.decider import Candidate

LAYERS = [
    LayerSpec(name="body.0", layer_id=11, kind="linear", input_shape=[2], output_shape=[8]),
    LayerSpec(name="body.2", layer_id=22, kind="linear", input_shape=[8], output_shape=[8]),
]


def session(*, budget: int = 2, cooldown: int = 0, auto_advance: bool = False, epochs: int = 8,
            status: SessionStatus = SessionStatus.RUNNING, enabled: bool = True,
            layers: list[LayerSpec] | None = None, seeds: list[Seed] | None = None) -> TrainingSessionEvent:
    """The session of a run; ``layers`` / ``seeds`` replace the declared layers / seed slots (defaults:
    two layers with two slots each)."""
    layers = LAYERS if layers is None else layers
    return TrainingSessionEvent(session=TrainingSession(
        session_id="run-1", name="t", description="test run",
        training_model_config=ModelSpec(architecture="mlp", input_shape=[2], num_classes=3, layers=layers,
                                        topology=[LayerEdge(source=a.name, target=b.name)
                                                  for a, b in zip(layers, layers[1:], strict=False)]),
        training_config=TrainingSpec(dataset="spirals", epochs=epochs, batch_size=32, learning_rate=1e-3,
                                     adaptation_budget=budget, cooldown_epochs=cooldown, auto_advance=auto_advance,
                                     adaptation_enabled=enabled),
        seeds=[Seed(layer_id=layer.layer_id, seed_idx=k, layer_name=layer.name) for layer in LAYERS for k in (0, 1)]
        if seeds is None else seeds,
        status=status,
    ))


def health(epoch: int, layer_id: int, seed_idx: int, *, score: float = 0.9, dead: float = 0.05,
           ready: bool = False) -> HealthSignal:
    return HealthSignal(layer_id=layer_id, seed_idx=seed_idx, epoch=epoch, activation_variance=0.5,
                        dead_neuron_ratio=dead, avg_correlation=0.1, gradient_norm=0.3, health_score=score,
                        is_ready_for_transition=ready, total_seeds=2)


def epoch_event(epoch: int, accuracy: float, *, signals: int = 4, transitions: int = 0) -> EpochCompleted:
    return EpochCompleted(
        state=SystemStatePacket(epoch=epoch, total_seeds=4, active_seeds=0, training_loss=1 - accuracy,
                                validation_loss=1 - accuracy, system_load=0.2, memory_usage=0.3),
        train_accuracy=accuracy, validation_accuracy=accuracy, epoch_seconds=0.1, parameter_count=100,
        health_signals=signals, seed_transitions=transitions)


def transition(epoch: int, layer_id: int, seed_idx: int, frm: SeedState, to: SeedState,
               command_id: str | None = None) -> SeedTransition:
    return SeedTransition(layer_id=layer_id, seed_idx=seed_idx, from_state=frm, to_state=to, epoch=epoch,
                          command_id=command_id)


def plateau_run(epochs: int = 6, **session_args) -> list[tuple[str, object]]:
    """A run whose accuracy stalls at 0.4 and whose body.2 units are dying: it needs capacity."""
    events: list[tuple[str, object]] = [(TopicName.TRAINING_SESSIONS.value, session(**session_args))]
    for epoch in range(epochs):
        for layer in LAYERS:
            for k in (0, 1):
                dead = 0.45 if layer.layer_id == 22 else 0.05
                events.append((TopicName.TELEMETRY_SEED_HEALTH.value,
                               health(epoch, layer.layer_id, k, score=1 - dead, dead=dead)))
        events.append((TopicName.SYSTEM_EVENTS_EPOCH.value, epoch_event(epoch, 0.4)))
    return events


class FixedChooser:
    """Kernels by slot shape, as the catalogue would give them."""

    def __init__(self, families: tuple[str, ...] = ("mlp", "bottleneck", "mlp_wide")) -> None:
        self.families = families
        self.asked: list[tuple[list[int], list[int]]] = []

    def candidates(self, input_shape: list[int], output_shape: list[int]) -> list[Candidate]:
        self.asked.append((input_shape, output_shape))
        slot = "x".join(map(str, input_shape)) + "-" + "x".join(map(str, output_shape))
        return [Candidate(f"kernel-{f}-{slot}", f"bp-{f}-{slot}", f) for f in self.families]

    def units(self, kernel_id: str) -> int:
        """A width kernel's units: ``kernel-width-IN-OUT`` adds 4."""
        return 4 if kernel_id.startswith("kernel-width-") else 0

    def positions(self) -> list[CatalogPosition]:
        return [CatalogPosition(topic="library.kernels", partition=0, offset=len(self.families))]
