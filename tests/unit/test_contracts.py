"""Every contract of the original design: fields, bounds, helpers and the fixed flaws."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

import contracts
from contracts import (
    AdaptationDecision,
    AdaptationType,
    Blueprint,
    BlueprintState,
    BlueprintStatus,
    HealthSignal,
    Seed,
    SeedId,
    SeedState,
    SystemHealth,
    SystemStatePacket,
    TrainingSession,
    layer_id_for_path,
    validate_seed_id,
)
from tests.samples import blueprint, health_signal, training_session


def test_public_api_is_sorted_and_complete():
    assert contracts.__all__ == sorted(contracts.__all__)
    for name in contracts.__all__:
        assert hasattr(contracts, name), name


# -- validate_seed_id and the one identity ---------------------------------------------------------
@pytest.mark.parametrize("value", [(0, 0), (3, 7), [2, 1]])
def test_validate_seed_id_accepts_pairs_of_non_negative_ints(value):
    assert validate_seed_id(value) == tuple(value)


@pytest.mark.parametrize(
    "value, error",
    [
        ((1,), ValueError),
        ((1, 2, 3), ValueError),
        ("12", ValueError),
        ((-1, 0), ValueError),
        ((0, -5), ValueError),
        ((1.0, 2), TypeError),
        ((1, "2"), TypeError),
        ((True, 2), TypeError),
    ],
)
def test_validate_seed_id_rejects(value, error):
    with pytest.raises(error):
        validate_seed_id(value)


def test_seed_identity_is_the_same_everywhere():
    seed = Seed(layer_id=4, position=1)
    signal = HealthSignal(
        layer_id=4, seed_id=1, epoch=0, activation_variance=0.1, dead_neuron_ratio=0, avg_correlation=0
    )
    assert seed.seed_id == signal.seed_id == SeedId.model_validate((4, 1))
    assert seed.position == seed.seed_idx == signal.seed_idx == 1
    assert hash(seed.seed_id) == hash(SeedId(layer_id=4, seed_idx=1))


def test_layer_ids_are_stable_across_processes():
    paths = ["encoder.0", "blocks.3.mlp.fc1", "head"]
    here = [layer_id_for_path(p) for p in paths]
    code = f"from contracts import layer_id_for_path; print([layer_id_for_path(p) for p in {paths!r}])"
    for seed in ("1", "999"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert out.stdout.strip() == str(here)
    assert len(set(here)) == 3
    assert all(0 <= i < 2**31 for i in here)


# -- strictness -------------------------------------------------------------------------------------
def test_unknown_fields_are_rejected():
    with pytest.raises(ValidationError, match="Extra inputs"):
        Seed(layer_id=0, position=0, colour="blue")


def test_assignment_is_validated():
    signal = health_signal()
    with pytest.raises(ValidationError):
        signal.health_score = 1.5


def test_naive_timestamps_are_rejected_and_aware_ones_become_utc():
    with pytest.raises(ValidationError):
        Seed(layer_id=0, position=0, created_at=datetime(2026, 1, 1))
    from datetime import timedelta

    local = datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    seed = Seed(layer_id=0, position=0, created_at=local)
    assert seed.created_at.utcoffset() == timedelta(0)
    assert seed.created_at.hour == 10


# -- bounds, as a table ----------------------------------------------------------------------------
HS = dict(layer_id=0, seed_idx=0, epoch=0, activation_variance=0.0, dead_neuron_ratio=0.0, avg_correlation=0.0)
SSP = dict(
    epoch=0, total_seeds=0, active_seeds=0, training_loss=0.0, validation_loss=0.0, system_load=0.0, memory_usage=0.0
)
AD = dict(layer_name="l", adaptation_type="add_seed", confidence=0.0, urgency=0.0)


@pytest.mark.parametrize(
    "model, base, field, ok, bad",
    [
        (HealthSignal, HS, "dead_neuron_ratio", [0.0, 1.0], [-0.01, 1.01]),
        (HealthSignal, HS, "avg_correlation", [-1.0, 1.0], [-1.01, 1.01]),
        (HealthSignal, HS, "health_score", [0.0, 1.0], [-0.1, 1.1]),
        (HealthSignal, HS, "activation_variance", [0.0, 1e9], [-1e-9]),
        (HealthSignal, HS, "total_seeds", [1], [0]),
        (HealthSignal, HS, "epoch", [0], [-1]),
        (HealthSignal, HS, "error_count", [0], [-1]),
        (SystemStatePacket, SSP, "system_load", [0.0, 1.0], [1.01, -0.1]),
        (SystemStatePacket, SSP, "memory_usage", [0.0, 1.0], [1.01]),
        (SystemStatePacket, SSP, "training_loss", [0.0], [-0.1]),
        (AdaptationDecision, AD, "confidence", [0.0, 1.0], [1.01]),
        (AdaptationDecision, AD, "urgency", [0.0, 1.0], [-0.01]),
        (AdaptationDecision, AD, "layer_name", ["x", "y" * 255], ["", "y" * 256]),
        (AdaptationDecision, AD, "adaptation_type", ["remove_seed", "optimize_parameters"], ["grow"]),
    ],
)
def test_bounds(model, base, field, ok, bad):
    for value in ok:
        assert getattr(model(**{**base, field: value}), field) == value
    for value in bad:
        with pytest.raises(ValidationError):
            model(**{**base, field: value})


@pytest.mark.parametrize("field, length", [("name", 256), ("description", 1001), ("created_by", 101)])
def test_blueprint_text_limits(field, length):
    data = blueprint().model_dump()
    data[field] = "x" * length
    with pytest.raises(ValidationError):
        Blueprint.model_validate(data)
    data[field] = ""
    with pytest.raises(ValidationError):
        Blueprint.model_validate(data)


# -- helpers ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "score, status", [(1.0, "Healthy"), (0.8, "Healthy"), (0.79, "Warning"), (0.6, "Warning"), (0.59, "Critical")]
)
def test_health_status(score, status):
    assert HealthSignal(**HS, health_score=score).health_status() == status


@pytest.mark.parametrize("score, errors, healthy", [(0.7, 4, True), (0.69, 0, False), (0.9, 5, False)])
def test_is_healthy(score, errors, healthy):
    assert HealthSignal(**HS, health_score=score, error_count=errors).is_healthy() is healthy


@pytest.mark.parametrize(
    "load, memory, health, overloaded, level",
    [
        (0.5, 0.5, "Normal", False, SystemHealth.HEALTHY),
        (0.71, 0.1, "Warning", False, SystemHealth.DEGRADED),
        (0.1, 0.85, "Warning", True, SystemHealth.DEGRADED),
        (0.95, 0.1, "Critical", True, SystemHealth.CRITICAL),
        (0.7, 0.8, "Warning", False, SystemHealth.DEGRADED),
    ],
)
def test_system_health(load, memory, health, overloaded, level):
    packet = SystemStatePacket(**{**SSP, "system_load": load, "memory_usage": memory})
    assert packet.system_health() == health
    assert packet.is_overloaded() is overloaded
    assert packet.health_level() == level


@pytest.mark.parametrize(
    "confidence, urgency, priority, now",
    [(0.9, 0.9, "High", True), (0.8, 0.8, "High", True), (0.5, 0.5, "Medium", False), (0.6, 0.75, "Medium", False),
     (0.61, 0.71, "Medium", True), (0.2, 0.3, "Low", False)],
)
def test_decision_priority(confidence, urgency, priority, now):
    decision = AdaptationDecision(**{**AD, "confidence": confidence, "urgency": urgency})
    assert decision.decision_priority() == priority
    assert decision.should_execute_immediately() is now


@pytest.mark.parametrize("state, active", [(s, s in (SeedState.TRAINING, SeedState.GRAFTING)) for s in SeedState])
def test_seed_helpers(state, active):
    seed = Seed(layer_id=0, position=0, state=state)
    assert seed.is_active() is active
    assert seed.state_display() == state.value.title()


def test_blueprint_helpers_and_content_id():
    bp = blueprint()
    assert bp.blueprint_id.startswith("bp-")
    assert blueprint().blueprint_id == bp.blueprint_id, "same architecture, same id"
    assert not bp.is_ready_for_deployment()
    bp.state = BlueprintState.CHARACTERIZED
    assert bp.is_ready_for_deployment()
    assert bp.get_performance_summary() == "Performance: accuracy: 0.910"
    bp.performance_metrics = {}
    assert bp.get_performance_summary() == "No metrics available"


def test_session_helpers():
    session = training_session()
    session.seeds = [
        Seed(layer_id=1, position=i, state=s)
        for i, s in enumerate([SeedState.TRAINING, SeedState.DORMANT, SeedState.GRAFTING])
    ]
    assert session.get_active_seed_count() == 2
    assert (
        session.get_session_summary() == "Session 'digits-mlp': 3 seeds (2 active), 1 blueprints, status: initialized"
    )
    with pytest.raises(ValidationError):
        TrainingSession.model_validate({**session.model_dump(), "status": "exploded"})


def test_legacy_blueprint_status_maps_to_the_one_vocabulary():
    assert {s: s.to_state() for s in BlueprintStatus} == {
        BlueprintStatus.UNVALIDATED: BlueprintState.PROPOSED,
        BlueprintStatus.COMPILING: BlueprintState.COMPILING,
        BlueprintStatus.VALIDATED: BlueprintState.VALIDATING,
        BlueprintStatus.INVALID: BlueprintState.FAILED,
    }


def test_adaptation_types_keep_the_original_four():
    assert {"add_seed", "remove_seed", "modify_architecture", "optimize_parameters"} <= {
        t.value for t in AdaptationType
    }
