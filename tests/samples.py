"""One valid sample payload per topic, with boundary values where contracts have bounds."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import fastavro

from contracts import (
    AdaptationDecision,
    AdaptationType,
    Blueprint,
    BlueprintArchitecture,
    BlueprintOp,
    BlueprintSubmitted,
    CatalogPosition,
    CommandAction,
    CompilationOutcome,
    CompiledKernel,
    EpochCompleted,
    FieldReport,
    FieldReportOutcome,
    GateResult,
    HealthSignal,
    KasminaCommand,
    KernelCharacterized,
    KernelMetadata,
    KernelReady,
    ModelSpec,
    OonaMessage,
    OpSpec,
    PolicyPromoted,
    PolicyPublished,
    Seed,
    SeedState,
    SeedTransition,
    SystemStatePacket,
    TrainingSession,
    TrainingSessionEvent,
    TrainingSpec,
)
from services.oona.avro import SINGLE_OBJECT_MAGIC
from services.oona.codec import SingleObjectCodec
from services.oona.topic_registry import TopicSpec, avro_topics

T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
CHECKSUM = "ab" * 32


def blueprint() -> Blueprint:
    return Blueprint(
        name="residual-mlp-32",
        description="Residual bottleneck adapter for a 32-wide linear slot",
        architecture=BlueprintArchitecture(
            input_shape=[32],
            output_shape=[32],
            layers=[
                OpSpec(op=BlueprintOp.LINEAR, width=16),
                OpSpec(op=BlueprintOp.RELU),
                OpSpec(op=BlueprintOp.LINEAR, width=32),
            ],
        ),
        hyperparameters={"lr_scale": 0.5},
        performance_metrics={"accuracy": 0.91},
        created_by="karn",
        created_at=T0,
        updated_at=T0,
    )


def kernel_metadata() -> KernelMetadata:
    return KernelMetadata(
        kernel_id="k-" + "cd" * 16,
        blueprint_id=blueprint().blueprint_id,
        name="residual-mlp-32",
        input_shape=[32],
        output_shape=[32],
        parameter_count=1072,
        memory_footprint_mb=0.004,
        optimization_flags={"dtype": "float32"},
        performance_profile={"latency_ms": 0.02},
        created_at=T0,
        checksum=CHECKSUM,
    )


def training_session() -> TrainingSession:
    return TrainingSession(
        session_id="run-sample",
        name="digits-mlp",
        description="sample session",
        training_model_config=ModelSpec(
            architecture="mlp",
            input_shape=[64],
            num_classes=10,
            hidden_sizes=[32],
            target_layers=["body.0"],
            seeds_per_layer=2,
        ),
        training_config=TrainingSpec(dataset="digits", epochs=5, batch_size=64, learning_rate=1e-3),
        seeds=[Seed(layer_id=7, position=0, state=SeedState.TRAINING, layer_name="body.0", metadata={"k": "v"})],
        blueprints=[blueprint()],
        created_at=T0,
        updated_at=T0,
    )


def payload_for(spec: TopicSpec):
    name = spec.payload.__name__
    if name == "TrainingSessionEvent":
        return TrainingSessionEvent(session=training_session(), final_validation_accuracy=1.0,
                                    experiment_id="exp-1", experiment_arm="adaptive",
                                    parent_run_id="run-parent", fork_epoch=4,
                                    parent_log_position={"training.sessions:0": 12, "system.events.epoch:0": 5},
                                    policy_version="gnn-0123456789ab")
    if name == "HealthSignal":
        return health_signal()
    if name == "EpochCompleted":
        return EpochCompleted(
            state=SystemStatePacket(
                epoch=3, total_seeds=4, active_seeds=1, training_loss=0.0, validation_loss=0.5,
                system_load=1.0, memory_usage=0.0, timestamp=T0,
            ),
            train_accuracy=0.0, validation_accuracy=1.0, epoch_seconds=1.5, parameter_count=4242,
        )
    if name == "AdaptationDecision":
        return AdaptationDecision(
            decision_id="d-1", layer_name="body.0", adaptation_type=AdaptationType.ADD_SEED, confidence=1.0,
            urgency=0.0, epoch=3, layer_id=7, seed_idx=0, blueprint_id="bp-x", policy_version="gnn-v1",
            features={"health": 0.4}, metadata={"why": "low health"}, timestamp=T0,
            command_id="c-1", action=CommandAction.GERMINATE, family="bottleneck",
            catalog_positions=[CatalogPosition(topic="library.kernels", partition=0, offset=12)],
        )
    if name == "KasminaCommand":
        return KasminaCommand(
            command_id="c-1", action=CommandAction.GERMINATE, layer_id=7, seed_idx=0, layer_name="body.0",
            blueprint_id="bp-x", kernel_id="k-1", decision_id="d-1", issued_at_epoch=3,
        )
    if name == "SeedTransition":
        return SeedTransition(
            layer_id=7,
            seed_idx=0,
            layer_name="body.0",
            from_state=SeedState.GRAFTING,
            to_state=SeedState.FOSSILIZED,
            epoch=9,
            reason="counterfactual gate passed",
            gates=[GateResult(name="counterfactual", passed=True, value=0.02, threshold=0.0)],
        )
    if name == "BlueprintSubmitted":
        bp = blueprint()
        return BlueprintSubmitted(blueprint_id=bp.blueprint_id, submitted_by="karn", blueprint=bp)
    if name == "KernelReady":
        return KernelReady(
            blueprint_id="bp-x", outcome=CompilationOutcome.READY, kernel=kernel_metadata(), compile_seconds=0.3
        )
    if name == "KernelCharacterized":
        return KernelCharacterized(
            kernel_id="k-1", blueprint_id="bp-x", device="cpu", latency_ms_p50=0.01, latency_ms_p95=0.02,
            peak_memory_mb=0.5, tags=["low-latency"], passed=True,
        )
    if name == "FieldReport":
        return FieldReport(
            layer_id=7, seed_idx=0, blueprint_id="bp-x", kernel_id="k-1", pre_metric=0.8, post_metric=0.85,
            outcome=FieldReportOutcome.FOSSILIZED, epochs_active=4, eval_metrics={"delta": 0.05},
        )
    if name == "CompiledKernel":
        return CompiledKernel(
            kernel_id="k-1", blueprint_id="bp-x", binary_ref="inline", metadata=kernel_metadata(),
            artifact=b"\x00\x01weights", created_at=T0, architecture=blueprint().architecture,
        )
    if name == "PolicyPublished":
        return PolicyPublished(
            version="gnn-0123456789ab", hidden=32, layers=3, features=["a", "b"], families=["mlp", "width"],
            trained_on="runs r1,r2", metrics={"samples": 12.0}, created_at=T0, checksum=CHECKSUM,
            artifact=b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ",
        )
    if name == "PolicyPromoted":
        return PolicyPromoted(version="gnn-0123456789ab", promoted_by="tests", reason="better", promoted_at=T0)
    raise KeyError(name)


def health_signal(epoch: int = 0, seed_idx: int = 0) -> HealthSignal:
    return HealthSignal(
        layer_id=7, seed_idx=seed_idx, layer_name="body.0", epoch=epoch, activation_variance=0.25,
        dead_neuron_ratio=0.0, avg_correlation=-1.0, gradient_norm=0.1, capacity_gain=0.03, health_score=1.0,
        execution_latency=0.05, total_seeds=2, timestamp=T0,
    )


def single_object_value(codec: SingleObjectCodec, spec: TopicSpec, record: dict[str, Any]) -> bytes | None:
    """``record`` as a single-object value of today's schema, written by fastavro; None where Avro cannot
    hold it (e.g. an int beyond 32 bits for an Avro int, a string for a number: never a value on the bus)."""
    body = io.BytesIO()
    try:
        fastavro.schemaless_writer(body, codec.store.reader(spec.record_name),
                                   {**record, "schema_version": record.get("schema_version", 1)})
    except Exception:  # noqa: BLE001 - whatever fastavro refuses to write
        return None
    return SINGLE_OBJECT_MAGIC + codec.store.fingerprint(spec.record_name) + body.getvalue()


def message_for(spec: TopicSpec, run_id: str = "run-sample", **envelope) -> OonaMessage:
    return spec.message_type(sender_id="tests", topic=spec.name, run_id=run_id, payload=payload_for(spec), **envelope)


def all_messages() -> list[tuple[TopicSpec, OonaMessage]]:
    return [(spec, message_for(spec)) for spec in avro_topics()]
