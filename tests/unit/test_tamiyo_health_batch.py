"""A batch of health signals folded as array work (``RunState.apply_health_batch``) leaves exactly the state that
``apply_health`` one signal at a time leaves: the same table, counts, refusals (and their reasons), features.

Generated runs (hypothesis, derandomized): batches of one epoch or several, a slot repeated in a batch (the first
stands), slots the session does not have, signals before the session, non-finite and out-of-range values, ids
beyond an Avro int (the one-by-one path), single signals and reads of the table between batches.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from contracts import (
    EpochCompleted,
    HealthSignal,
    LayerSpec,
    ModelSpec,
    Seed,
    SystemStatePacket,
    TrainingSession,
    TrainingSessionEvent,
    TrainingSpec,
)
from services.tamiyo.features import build_graph
from services.tamiyo.run_state import RejectedEvent, RunState

EPOCHS = 4
_LAYER_IDS = (0, 7, 100, 101, 2**31 - 1)
_ODD_VALUES = (math.inf, -math.inf, math.nan, -3.0, 1e300, 0.0)
_FIELDS = ("activation_variance", "gradient_norm", "execution_latency", "health_score", "capacity_gain",
           "dead_neuron_ratio", "avg_correlation")


def _session(slots: list[tuple[int, int]]) -> TrainingSessionEvent:
    layer_ids = sorted({layer_id for layer_id, _ in slots})
    layers = [LayerSpec(name=f"body.{i}", layer_id=layer_id, kind="linear", input_shape=[8], output_shape=[8])
              for i, layer_id in enumerate(layer_ids)]
    return TrainingSessionEvent(session=TrainingSession(
        session_id="run-1", name="r", description="batch fold",
        training_model_config=ModelSpec(architecture="mlp", input_shape=[8], num_classes=3, layers=layers),
        training_config=TrainingSpec(dataset="spirals", epochs=EPOCHS, batch_size=32, learning_rate=1e-3),
        seeds=[Seed(layer_id=layer_id, seed_idx=k, layer_name=f"body.{layer_ids.index(layer_id)}")
               for layer_id, k in slots]))


def _epoch(epoch: int) -> EpochCompleted:
    return EpochCompleted(
        state=SystemStatePacket(epoch=epoch, total_seeds=1, active_seeds=0, training_loss=0.5, validation_loss=0.5,
                                system_load=0.1, memory_usage=0.1),
        train_accuracy=0.5, validation_accuracy=0.5, epoch_seconds=1.0, parameter_count=1000)


@st.composite
def _signal(draw, slots: list[tuple[int, int]]) -> HealthSignal:
    if slots and draw(st.integers(0, 9)) < 8:
        layer_id, seed_idx = draw(st.sampled_from(slots))
    else:  # a slot the session may not have
        layer_id, seed_idx = draw(st.sampled_from(_LAYER_IDS)), draw(st.integers(0, 4))
    signal = HealthSignal(
        layer_id=layer_id, seed_idx=seed_idx, epoch=draw(st.integers(0, EPOCHS - 1)),
        activation_variance=draw(st.floats(0, 2)), dead_neuron_ratio=draw(st.floats(0, 1)),
        avg_correlation=draw(st.floats(-1, 1)), gradient_norm=draw(st.floats(0, 3)),
        capacity_gain=draw(st.floats(0, 0.3)), health_score=draw(st.floats(0, 1)),
        execution_latency=draw(st.floats(0, 5)), error_count=draw(st.integers(0, 3)),
        is_ready_for_transition=draw(st.booleans()))
    if draw(st.integers(0, 9)) == 0:  # bytes on the log may hold what validation would refuse
        signal = signal.model_copy(update={draw(st.sampled_from(_FIELDS)): draw(st.sampled_from(_ODD_VALUES))})
    return signal


@st.composite
def _runs(draw):
    """(the session's slots, steps): a step is ("batch", signals), ("one", signal), ("read", epoch) or ("session",)."""
    pool = [(layer_id, k) for layer_id in _LAYER_IDS for k in range(3)]
    if draw(st.booleans()):
        pool.append((2**31 + 5, 0))  # beyond an Avro int: the batch takes the one-by-one path
    slots = draw(st.lists(st.sampled_from(pool), max_size=8))  # a session may name a slot twice
    steps: list[tuple] = []
    session_at = draw(st.integers(0, 2))
    for i in range(draw(st.integers(1, 6))):
        if i == session_at:
            steps.append(("session",))
        kind = draw(st.sampled_from(["batch", "batch", "batch", "one", "read"]))
        if kind == "batch":
            epoch = draw(st.integers(0, EPOCHS - 1))
            signals = draw(st.lists(_signal(slots), max_size=12))
            if draw(st.booleans()):  # an epoch's telemetry: one epoch for the whole batch
                signals = [s.model_copy(update={"epoch": epoch}) for s in signals]
            if signals and draw(st.booleans()):  # a slot repeated in the batch, with other values
                twice = draw(st.sampled_from(signals))
                signals.insert(draw(st.integers(0, len(signals))), twice.model_copy(update={"health_score": 0.123}))
            steps.append(("batch", signals))
        elif kind == "one":
            steps.append(("one", draw(_signal(slots))))
        else:
            steps.append(("read", draw(st.integers(0, EPOCHS - 1))))
    if session_at >= len([s for s in steps if s[0] != "session"]):
        steps.append(("session",))
    return slots, steps


def _fold(slots: list[tuple[int, int]], steps: list[tuple], batched: bool) -> tuple[RunState, list]:
    run = RunState("run-1")
    for epoch in range(EPOCHS):
        run.apply_epoch(_epoch(epoch))
    outcomes: list = []
    for step in steps:
        if step[0] == "session":
            run.apply_session(_session(slots))
        elif step[0] == "read":
            if run.session is not None:
                build_graph(run, step[1])  # staged signals written into the table
        elif step[0] == "one" or not batched:
            for signal in ([step[1]] if step[0] == "one" else step[1]):
                try:
                    run.apply_health(signal)
                    outcomes.append(None)
                except RejectedEvent as exc:
                    outcomes.append(str(exc))
        else:
            refused = dict(run.apply_health_batch(step[1]))
            outcomes += [str(refused[i]) if i in refused else None for i in range(len(step[1]))]
    return run, outcomes


def _assert_same_state(got: RunState, want: RunState) -> None:
    assert got.health_per_epoch == want.health_per_epoch
    assert got.refused_before_session == want.refused_before_session
    assert got.slot_rows == want.slot_rows
    rows = np.arange(len(want.slot_rows), dtype=np.int64)
    for epoch in range(EPOCHS):
        for a, b in zip(got.health.latest(rows, epoch), want.health.latest(rows, epoch), strict=True):
            np.testing.assert_array_equal(a, b)  # NaN where NaN
        if want.session is not None:
            torch.testing.assert_close(build_graph(got, epoch).x, build_graph(want, epoch).x, rtol=0, atol=0,
                                       equal_nan=True)


@pytest.mark.timeout(120)
@settings(max_examples=150, derandomize=True, database=None, deadline=None)
@given(_runs())
def test_a_batch_folds_as_the_signals_one_by_one(run):
    slots, steps = run
    one_by_one, want = _fold(slots, steps, batched=False)
    batched, got = _fold(slots, steps, batched=True)
    assert got == want  # the same signals refused, for the same reasons
    _assert_same_state(batched, one_by_one)


def test_the_first_of_a_slot_in_a_batch_stands_and_the_next_is_refused():
    run = RunState("run-1")
    run.apply_session(_session([(100, 0), (100, 1)]))
    run.apply_epoch(_epoch(0))
    first = HealthSignal(layer_id=100, seed_idx=0, epoch=0, activation_variance=1, dead_neuron_ratio=0.1,
                         avg_correlation=0, health_score=0.25)
    again, unknown = first.model_copy(update={"health_score": 0.75}), first.model_copy(update={"layer_id": 5})
    refused = run.apply_health_batch([first, again, unknown])
    assert [(i, str(exc)) for i, exc in refused] == [
        (1, "second health signal for seed 100:0 epoch 0"), (2, "run run-1 has no seed slot 5:0")]
    assert run.health_per_epoch[0] == 1
    values, _, count = run.health.latest(run.seed_rows(), 0)
    assert count.tolist() == [1, 0] and values[0, 0, 0] == 0.25  # health_score is the first column
    assert [i for i, _ in run.apply_health_batch([first])] == [0]  # and in a later batch too
